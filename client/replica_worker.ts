// Worker entry of a replica (client/replica_remote.ts is the page's side): "open" starts a whole replica here
// (store over IndexedDB, sync sessions, checks), "call" and "subscribe" serve the page; "check" alone hashes and
// verifies a batch for a replica that lives elsewhere (workerChecker). Messages are plain data.
import { checkEvents } from "../storage/replica_store.ts";
import { toWire } from "../core/errors.ts";
import { openReplica, type Replica } from "./replica.ts";
import { keyPairFromSeed } from "./keys.ts";
import { packEvents, REMOTE_METHODS, type ReplicaProgress, type ToWorker } from "./replica_remote.ts";
import { sha256 } from "@noble/hashes/sha2";

/** `progress` goes to the page at most this often (ms): the Worker may report thousands a second. */
const PROGRESS_EVERY_MS = 50;

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
  postMessage(m: unknown, transfer?: Transferable[]): void;
};

let replica: Replica | null = null;
const subs = new Map<number, () => void>();
let progressTimer: ReturnType<typeof setTimeout> | undefined;

const reply = (id: number, result: unknown, transfer: Transferable[] = []) =>
  scope.postMessage({ id, result }, transfer);
const fail = (id: number, e: unknown) => scope.postMessage({ id, error: toWire(e) });

/**
 * Post events to the page as packs of at most REPLICA_PAGE_BYTES_MAX bytes, one message each (buffers
 * transferred), with their ids hashed here: the page only decodes, one bounded pack per task.
 */
function postEvents(events: Uint8Array[], message: (pack: ReturnType<typeof packEvents>[number]) => object): void {
  const ids = new Uint8Array(events.length * 32);
  events.forEach((e, i) => ids.set(sha256(e), i * 32));
  for (const p of packEvents(events, ids)) {
    scope.postMessage(message(p), [
      p.bytes.buffer as ArrayBuffer,
      p.ends.buffer as ArrayBuffer,
      p.ids.buffer as ArrayBuffer,
    ]);
  }
}

async function handle(m: ToWorker): Promise<void> {
  if (m.op === "check") {
    const events: Uint8Array[] = [];
    let start = 0;
    for (const end of m.ends) {
      events.push(m.bytes.subarray(start, end));
      start = end;
    }
    const r = await checkEvents(events);
    return scope.postMessage({ id: m.id, ids: r.ids, errors: r.errors }, [r.ids.buffer as ArrayBuffer]);
  }
  if (m.op === "open") {
    if (replica) throw new TypeError("Cannot open a second replica in this Worker");
    const r = await openReplica({
      key: await keyPairFromSeed(m.seed),
      groups: m.groups,
      ...(m.window ? { window: m.window } : {}),
      store: m.store ?? "xaeroflux-replica",
      nodes: m.nodes,
    });
    replica = r;
    r.addEventListener("progress", () => {
      if (progressTimer !== undefined) return;
      progressTimer = setTimeout(() => {
        progressTimer = undefined;
        scope.postMessage({ event: "progress", detail: r.progress() satisfies ReplicaProgress });
      }, PROGRESS_EVERY_MS);
    });
    for (const type of ["synced", "error"]) {
      r.addEventListener(type, (e) => scope.postMessage({ event: type, detail: (e as CustomEvent).detail }));
    }
    return reply(m.id, r.progress());
  }
  const r = replica;
  if (!r) throw new TypeError("Cannot serve the page: no replica is open in this Worker");
  if (m.op === "subscribe") {
    subs.set(
      m.sub,
      r.subscribeBytes(
        m.gid,
        (events) => postEvents(events, (pack) => ({ event: "events", sub: m.sub, pack })),
        m.backfill,
      ),
    );
    return reply(m.id, true);
  }
  if (m.op === "unsubscribe") {
    subs.get(m.sub)?.();
    subs.delete(m.sub);
    return reply(m.id, true);
  }
  if (!(REMOTE_METHODS as readonly string[]).includes(m.method)) throw new TypeError(`No method "${m.method}"`);
  const a = m.args;
  switch (m.method) {
    case "publish":
      return reply(m.id, (await r.publish(a[0] as string, a[1] as never)).bytes);
    case "add":
      return reply(m.id, await r.add(a[0] as Uint8Array[]));
    case "query":
      postEvents(await r.store.query(a[0] as string, (a[1] ?? {}) as never), (part) => ({ id: m.id, part }));
      return reply(m.id, null);
    case "root":
      return reply(m.id, await r.root(a[0] as string));
    case "bytesOnDisk":
      return reply(m.id, await r.bytesOnDisk());
    case "sessions":
      return reply(m.id, r.sessions());
    case "whenSynced":
      return reply(m.id, await r.whenSynced(a[0] as number));
    case "addNode":
      return reply(m.id, r.addNode(a[0] as never));
    case "groups":
      return reply(m.id, r.groups());
    case "traffic":
      return reply(m.id, r.traffic());
    case "stats":
      return reply(m.id, r.store.stats);
    case "progress":
      return reply(m.id, r.progress());
    case "close":
      for (const u of subs.values()) u();
      subs.clear();
      await r.close();
      replica = null;
      return reply(m.id, true);
  }
}

scope.onmessage = (ev) => {
  handle(ev.data).catch((e) => fail(ev.data.id, e));
};
