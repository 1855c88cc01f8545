// The layout's layers, checked: every import of the production code goes downwards
// (core < merkle < storage < actors < net < node.ts and mod.ts < the CLI programs), no module imports itself back
// through a cycle, and the browser client imports only core, merkle and the storage modules that use no Deno API.
// Imports are read from the source text (comments, and so doc examples, left out).
import { assert, assertEquals } from "@std/assert";

const ROOT = new URL("../", import.meta.url);

/** Each layer may import its own and the layers before it. */
const LAYERS = ["core", "merkle", "storage", "actors", "net", "node", "programs"] as const;
type Layer = (typeof LAYERS)[number] | "client";

/** Files outside their directory's layer, each with why. */
const PLACED: Record<string, Layer> = {
  "version.ts": "core", // two constants, imported by every layer
  "node.ts": "node", // the library façade, on top of net/
  "mod.ts": "node", // the library's entry
  "net/main.ts": "programs", // the `xf` program: opens a node (node.ts) and runs client commands (client/)
  "net/cli_export.ts": "programs", // `xf export` / `xf import`: a client program
};

/**
 * Cycles not fixed yet, each with why. The list only shrinks: an entry that no longer occurs fails the test until it
 * is removed.
 */
const CYCLES_KNOWN: Record<string, string> = {};

/** Where the browser client may reach (it is bundled: no Deno API). */
const CLIENT_MAY: Layer[] = ["core", "merkle", "storage", "client"];

/**
 * Modules above storage the client may import, each with why. The replica (client/replica.ts) is a peer: it runs
 * the node's own sync session and handshake, so it imports them rather than a copy. Each must stay Deno-free
 * (no `Deno.` and no `node:` import, checked below over everything client/mod.ts reaches).
 */
const CLIENT_MAY_ALSO: Record<string, string> = {
  "net/sync.ts": "the sync protocol's session, run by the replica as initiator",
  "net/channel.ts": "a WebSocket as the session's frame channel",
  "net/secure.ts": "the encrypted handshake under the session (imported for its types)",
};

function layerOf(path: string): Layer | null {
  if (path in PLACED) return PLACED[path]!;
  const dir = path.split("/")[0]!;
  if (dir === "client") return "client";
  return (LAYERS as readonly string[]).includes(dir) && dir !== "node" && dir !== "programs" ? dir as Layer : null;
}

/** The text of a module with its comments blanked out (string contents kept). */
export function stripComments(src: string): string {
  let out = "";
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!, d = src[i + 1];
    if (c === "/" && d === "*") {
      const end = src.indexOf("*/", i + 2);
      i = end < 0 ? src.length : end + 1;
      out += " ";
    } else if (c === "/" && d === "/") {
      while (i < src.length && src[i] !== "\n") i++;
      out += "\n";
    } else if (c === '"' || c === "'") {
      // A quoted string ends on its line; a quote with no partner there (inside a regex) is just a character.
      let j = i + 1;
      while (j < src.length && src[j] !== c && src[j] !== "\n") j += src[j] === "\\" ? 2 : 1;
      if (src[j] === c) {
        out += src.slice(i, j + 1);
        i = j;
      } else out += c;
    } else out += c;
  }
  return out;
}

/** Relative specifiers a module imports or re-exports, statically or dynamically (`import("…")`, `new URL("…")`). */
export function importsOf(src: string): string[] {
  const code = stripComments(src);
  const out: string[] = [];
  // Static imports and re-exports start a line; dynamic imports and Worker URLs may stand anywhere.
  const re =
    /(?:^[ \t]*(?:import|export)\b[^;]*?\bfrom\s*|^[ \t]*import\s*|\bimport\(\s*|new\s+URL\(\s*)["'](\.{1,2}\/[^"']+\.(?:ts|js|mjs))["']/gm;
  for (const m of code.matchAll(re)) out.push(m[1]!);
  return out;
}

function resolve(from: string, spec: string): string {
  return new URL(spec, new URL(from, ROOT)).pathname.slice(ROOT.pathname.length);
}

async function productionFiles(): Promise<string[]> {
  const files: string[] = ["version.ts", "node.ts", "mod.ts"];
  for (const dir of ["core", "merkle", "storage", "actors", "net", "client"]) {
    const walk = async (d: string) => {
      for await (const e of Deno.readDir(new URL(d, ROOT))) {
        if (e.isDirectory) await walk(`${d}/${e.name}`);
        else if (e.name.endsWith(".ts")) files.push(`${d}/${e.name}`);
      }
    };
    await walk(dir);
  }
  return files.sort();
}

/** Upward imports and cycles of a module graph. */
export function checkLayers(graph: Map<string, string[]>): { upward: string[]; cycles: string[] } {
  const upward: string[] = [];
  for (const [file, deps] of graph) {
    const from = layerOf(file);
    for (const dep of deps) {
      const to = layerOf(dep);
      if (from === null || to === null) {
        upward.push(`${file} -> ${dep}: ${from === null ? file : dep} is in no layer`);
      } else if (
        from === "client"
          ? !CLIENT_MAY.includes(to) && !(dep in CLIENT_MAY_ALSO)
          : to === "client"
          ? from !== "programs"
          : (
            LAYERS.indexOf(to) > LAYERS.indexOf(from)
          )
      ) upward.push(`${file} (${from}) -> ${dep} (${to})`);
    }
  }
  // Cycles: a depth-first search that reports each back edge's loop once.
  const cycles: string[] = [];
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (f: string) => {
    state.set(f, 1);
    stack.push(f);
    for (const d of graph.get(f) ?? []) {
      if (state.get(d) === 1) cycles.push([...stack.slice(stack.indexOf(d)), d].join(" -> "));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(f, 2);
  };
  for (const f of graph.keys()) if (!state.has(f)) visit(f);
  return { upward, cycles };
}

async function graphOf(files: string[]): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const src = await Deno.readTextFile(new URL(f, ROOT));
    graph.set(f, [...new Set(importsOf(src).map((s) => resolve(f, s)))]);
  }
  return graph;
}

Deno.test("Every import goes down the layers (core < merkle < storage < actors < net < node.ts < programs), no cycle", async () => {
  const files = await productionFiles();
  const graph = await graphOf(files);
  assert(graph.size > 50, `only ${graph.size} modules found`);
  const { upward, cycles } = checkLayers(graph);
  assertEquals(upward, [], "upward imports");
  assertEquals(cycles.filter((c) => !(c in CYCLES_KNOWN)), [], "import cycles");
  assertEquals(
    Object.keys(CYCLES_KNOWN).filter((c) => !cycles.includes(c)),
    [],
    "CYCLES_KNOWN entries gone: remove them",
  );
});

Deno.test("The browser client reaches no module that uses a Deno API or a node: module", async () => {
  const graph = await graphOf(await productionFiles());
  const seen = new Set<string>();
  const todo = ["client/mod.ts", "client/replica_mod.ts"];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    todo.push(...(graph.get(f) ?? []));
  }
  const deno: string[] = [];
  for (const f of seen) {
    const src = stripComments(await Deno.readTextFile(new URL(f, ROOT)));
    if (/\bDeno\./.test(src) || /["']node:/.test(src)) deno.push(f);
  }
  for (const f of Object.keys(CLIENT_MAY_ALSO)) assert(seen.has(f), `${f} is allowed to the client but not reached`);
  assert(seen.size > 10, `client/mod.ts reaches only ${seen.size} modules`);
  assertEquals(deno, [], "modules the client bundles that use Deno APIs");
});

Deno.test("The layer check catches an upward import, a client import of net/, and a cycle", () => {
  const { upward, cycles } = checkLayers(
    new Map([
      ["storage/a.ts", ["actors/b.ts"]],
      ["actors/b.ts", ["storage/a.ts"]],
      ["client/c.ts", ["net/d.ts"]],
      ["net/d.ts", []],
      ["core/e.ts", ["core/e.ts"]],
    ]),
  );
  assertEquals(upward, ["storage/a.ts (storage) -> actors/b.ts (actors)", "client/c.ts (client) -> net/d.ts (net)"]);
  assertEquals(cycles, ["storage/a.ts -> actors/b.ts -> storage/a.ts", "core/e.ts -> core/e.ts"]);
  assertEquals(importsOf('/** import { x } from "../up.ts"; */\nimport { y } from "./down.ts";'), ["./down.ts"]);
  assertEquals(importsOf('const r = /[^"]/g;\n/**\n * import { x } from "../up.ts";\n */\nexport * from "./a.ts";'), [
    "./a.ts",
  ]);
  assertEquals(importsOf('import {\n  a,\n  b,\n} from "./multi.ts";\nconst w = new URL("./w.ts", import.meta.url);'), [
    "./multi.ts",
    "./w.ts",
  ]);
});
