// A helper Worker of the decode stage: verifies the signatures it is sent (see verify.ts).
import { type SigCheck, verifyAll } from "./verify.ts";

self.onmessage = (ev: MessageEvent<{ id: number; checks: SigCheck[] }>) => {
  (self as unknown as Worker).postMessage({ id: ev.data.id, ok: verifyAll(ev.data.checks) });
};
