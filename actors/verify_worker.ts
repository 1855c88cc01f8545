// A helper Worker of the decode stage: verifies the signatures it is sent (see verify.ts).
import { type SigCheck, verifyAll } from "./verify.ts";

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<{ id: number; checks: SigCheck[] }>) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (ev) => scope.postMessage({ id: ev.data.id, ok: verifyAll(ev.data.checks) });
