// Worker entry of a replica's checker: hashes, decodes and verifies the batches it is sent (storage/replica_store.ts
// checkEvents), so a browser's main thread does none of it. Messages are plain data; see client/replica.ts workerChecker.
import { checkEvents } from "../storage/replica_store.ts";
import { toWire } from "../core/errors.ts";

interface CheckRequest {
  id: number;
  /** Every event's bytes, concatenated; `ends[i]` is where event i ends. */
  bytes: Uint8Array;
  ends: Uint32Array;
}

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<CheckRequest>) => void) | null;
  postMessage(m: unknown, transfer?: Transferable[]): void;
};

scope.onmessage = async (ev) => {
  const { id, bytes, ends } = ev.data;
  try {
    const events: Uint8Array[] = [];
    let start = 0;
    for (const end of ends) {
      events.push(bytes.subarray(start, end));
      start = end;
    }
    const r = await checkEvents(events);
    scope.postMessage({ id, ids: r.ids, errors: r.errors }, [r.ids.buffer as ArrayBuffer]);
  } catch (e) {
    scope.postMessage({ id, error: toWire(e) });
  }
};
