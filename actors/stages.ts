/**
 * The stage modules by stage id, loaded by a host when it is told which
 * stage it runs (a dynamic import keeps each Worker to its own stage's code).
 *
 * @module
 */

import type { StageModule } from "./stage.ts";

/** Stage modules by stage id (dynamic import keeps a Worker to the code of its stage). */
export const MODULES: Record<string, () => Promise<StageModule>> = {
  ingest: async () => (await import("./ingest.ts")).default as unknown as StageModule,
  decode: async () => (await import("./decode.ts")).default as unknown as StageModule,
  wal_flush: async () => (await import("./wal_flush.ts")).default as unknown as StageModule,
  index: async () => (await import("./index.ts")).default as unknown as StageModule,
  advertise: async () => (await import("./advertise.ts")).default as unknown as StageModule,
};
