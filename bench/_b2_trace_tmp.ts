import { runReplicaBrowser } from "../tests/_replica_browser.ts";
const n = Number(Deno.args[0] ?? 100000);
const f = await runReplicaBrowser({ events: n, offline: 10, dayEvents: 10, stepMs: 600_000, ...(Deno.args[1] ? { trace: Deno.args[1] } : {}) });
console.log(JSON.stringify({ syncMs: f.syncMs, rate: f.syncRate, gap: f.maxGapMs, lt: f.longTaskMs, tasks: f.longTasks, store: f.store }));
