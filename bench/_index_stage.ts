// The index stage's runtime on a RocksDB directory, driven directly by a benchmark (no node, no other stages): a
// host that answers no asks or requests and always has room, as bench/merkle.ts and bench/scale.ts use it.
import { effects as indexEffects, logic as indexLogic } from "../actors/index.ts";
import { LIMITS } from "../core/limits.ts";

/** Start the index stage on `dbDir` with the default limits; returns its runtime. */
export async function startIndexStage(dbDir: string): Promise<ReturnType<typeof indexEffects>> {
  const config = { dir: dbDir, limits: { ...LIMITS } };
  const stage = indexEffects({
    ask: () => Promise.reject(new Error("no asks")),
    request: () => Promise.reject(new Error("no requests")),
    receive() {},
    room: () => Promise.resolve(),
  });
  await stage.start(indexLogic.init(config), config);
  return stage;
}
