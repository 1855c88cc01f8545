// Runs the README's examples as written, against live nodes: every ```sh line (as a command, with `deno task start`
// and `deno task example:chat` in the background until their first stdout line), every ```ts block, the ```html page
// in headless Chromium, and a check of the ```ini systemd unit against deno.json's `start` task.
//
// Rewrites, the same for the whole run: 127.0.0.1:7878 and 7879 (and `--port` 7878 and 7879) become free ports; `./data`,
// `./data2`, `./data-app` and `me.key` become paths in a temp dir; the environment gives `deno task start` and the
// client commands the README's defaults on those ports (XF_PORT, XF_DATA, XF_NODE). Placeholders: GID is the group of
// the last `group create` before it that made an open group (the walkthrough reads it without a key and syncs it to a
// second node, which only an open group allows), KEY the public key of a second key made beforehand, EVENT_ID the id
// printed by the last `publish`. Not run: `deno task test` (this test is part of it).
import { assert, assertEquals } from "@std/assert";
// Test-only, so not in deno.json: `deno task start` installs only what a node runs (README).
import puppeteer, { type Browser } from "npm:puppeteer-core@25.16.0";
import { CHROMIUM, CHROMIUM_ARGS, hasChromium, inCi } from "./_chromium.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO = Deno.execPath();
/** One command, or one example program. */
const CMD_MS = 60_000;
/** The whole test. */
const TEST_MS = 300_000;
/** How long `xf tail` (which never ends by itself) is left to print. */
const TAIL_MS = 5_000;

/** What the page callback (run in Chromium) uses of the DOM; Deno's types have none. */
declare const document: { querySelectorAll(selector: string): Iterable<{ textContent: string | null }> };

interface Block {
  lang: string;
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
}

/** The fenced code blocks of a Markdown text. */
export function fencedBlocks(md: string): Block[] {
  const out: Block[] = [];
  const lines = md.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    while (++i < lines.length && !/^```\s*$/.test(lines[i]!)) body.push(lines[i]!);
    out.push({ lang: open[1]!, code: body.join("\n"), line: start + 1 });
  }
  return out;
}

/** A shell line's words: single and double quotes, and a trailing `# comment` dropped. */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'" || c === '"') {
      const end = line.indexOf(c, i + 1);
      if (end < 0) throw new Error(`Cannot parse README line ${JSON.stringify(line)}: unclosed ${c}`);
      word = (word ?? "") + line.slice(i + 1, end);
      i = end;
    } else if (/\s/.test(c)) {
      if (word !== null) words.push(word);
      word = null;
    } else if (c === "#" && word === null) break;
    else word = (word ?? "") + c;
  }
  if (word !== null) words.push(word);
  return words;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function withDeadline<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Cannot finish ${what}: over ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Reads a stream to the end into `sink`, calling `onLine` for each complete line. */
async function drain(stream: ReadableStream<Uint8Array>, sink: { text: string }, onLine?: (l: string) => void) {
  let rest = "";
  // Typed by hand: a module with `lib="dom"` (storage/kv_idb.ts) in the same check changes TextDecoderStream's type.
  for await (
    const chunk of stream.pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>)
  ) {
    sink.text += chunk;
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf("\n")) >= 0) {
      onLine?.(rest.slice(0, nl));
      rest = rest.slice(nl + 1);
    }
  }
}

interface Run {
  /** The README line as written. */
  written: string;
  args: string[];
  child: Deno.ChildProcess;
  stdout: { text: string };
  stderr: { text: string };
  done: Promise<Deno.CommandStatus>;
  /** `--port` and `--data` of a background node, to stop it before another takes them. */
  port?: string;
  data?: string;
}

class Runner {
  readonly background: Run[] = [];
  readonly ran: string[] = [];
  readonly skipped: string[] = [];
  gid = "";
  key = "";
  eventId = "";

  constructor(readonly tmp: string, readonly p1: number, readonly p2: number) {}

  get env(): Record<string, string> {
    return {
      NO_COLOR: "1",
      XF_PORT: String(this.p1),
      XF_DATA: `${this.tmp}/data`,
      XF_NODE: `http://127.0.0.1:${this.p1}`,
    };
  }

  /** The README's addresses and paths mapped to this run's. */
  rewrite(text: string): string {
    return text
      .replaceAll("127.0.0.1:7878", `127.0.0.1:${this.p1}`)
      .replaceAll("127.0.0.1:7879", `127.0.0.1:${this.p2}`)
      .replace(/(^|[\s"'])\.\/(data2|data-app|data)(?![\w-])/g, `$1${this.tmp}/$2`)
      .replace(/(^|[\s"'])me\.key\b/g, `$1${this.tmp}/me.key`);
  }

  spawn(written: string, args: string[], cwd = ROOT): Run {
    const child = new Deno.Command(DENO, {
      args,
      cwd,
      env: this.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const run: Run = { written, args, child, stdout: { text: "" }, stderr: { text: "" }, done: child.status };
    return run;
  }

  describe(run: Run, why: string): string {
    return `README command failed (${why}): ${run.written}\n  ran: deno ${run.args.join(" ")}\n  stdout: ${
      run.stdout.text.trim().slice(-2000)
    }\n  stderr: ${run.stderr.text.trim().slice(-4000)}`;
  }

  /** Runs to the end (bounded), fails on a non-zero exit; answers stdout. */
  async once(written: string, args: string[], ms = CMD_MS): Promise<string> {
    const run = this.spawn(written, args);
    const io = Promise.all([drain(run.child.stdout, run.stdout), drain(run.child.stderr, run.stderr)]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      run.done,
      new Promise<null>((r) => timer = setTimeout(() => r(null), ms)),
    ]).finally(() => clearTimeout(timer));
    if (status === null) {
      await this.stop(run);
      await io;
      throw new Error(this.describe(run, `still running after ${ms} ms`));
    }
    await io;
    if (status.code !== 0) throw new Error(this.describe(run, `exit ${status.code}`));
    return run.stdout.text;
  }

  /** Starts a long-running command and waits for its first stdout line, which must match `ready`. */
  async start(written: string, args: string[], ready: RegExp): Promise<Run> {
    const run = this.spawn(written, args);
    let first: (l: string) => void = () => {};
    const firstLine = new Promise<string>((r) => first = r);
    drain(run.child.stdout, run.stdout, (l) => first(l)).catch(() => {});
    drain(run.child.stderr, run.stderr).catch(() => {});
    this.background.push(run);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const line = await Promise.race([
      firstLine,
      run.done.then((s) => `(exited with ${s.code})`),
      new Promise<string>((r) => timer = setTimeout(() => r(`(no line in ${CMD_MS} ms)`), CMD_MS)),
    ]).finally(() => clearTimeout(timer));
    if (!ready.test(line)) throw new Error(this.describe(run, `first line ${JSON.stringify(line)}, not ${ready}`));
    return run;
  }

  /** SIGTERM (deno task passes it on), then SIGKILL if it lingers. */
  async stop(run: Run): Promise<void> {
    const i = this.background.indexOf(run);
    if (i >= 0) this.background.splice(i, 1);
    try {
      run.child.kill("SIGTERM");
    } catch { /* already gone */ }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gone = await Promise.race([
      run.done.then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), 15_000)),
    ]).finally(() => clearTimeout(timer));
    if (!gone) {
      try {
        run.child.kill("SIGKILL");
      } catch { /* gone */ }
      await run.done;
    }
  }

  async stopAll(): Promise<void> {
    for (const run of [...this.background].reverse()) await this.stop(run);
  }

  /** One README ```sh line. */
  async command(line: string): Promise<void> {
    const words = shellWords(line);
    if (words.length === 0) return;
    const shown = words.join(" ");
    if (shown === "deno task test") {
      this.skipped.push(`${shown} (this test runs inside it)`);
      return;
    }
    const ports: Record<string, number> = { "7878": this.p1, "7879": this.p2 };
    const w = words.map((word, i) =>
      (words[i - 1] === "--port" && ports[word] ? String(ports[word]) : this.rewrite(word))
        .replace(/\bGID\b/g, () => this.need(this.gid, "GID", shown))
        .replace(/\bKEY\b/g, () => this.need(this.key, "KEY", shown))
        .replace(/\bEVENT_ID\b/g, () => this.need(this.eventId, "EVENT_ID", shown))
    );
    assertEquals(w[0], "deno", `README line does not run deno: ${line}`);
    const args = w.slice(1);
    const value = (flag: string) => {
      const i = args.indexOf(flag);
      return i >= 0 ? args[i + 1] : undefined;
    };
    this.ran.push(shown);
    const task = args.slice(0, 2).join(" ");
    const sub = args.slice(2, 4).join(" ");
    if (task === "task start") {
      const port = value("--port") ?? String(this.p1);
      const data = value("--data") ?? `${this.tmp}/data`;
      // The README restarts "the node" in several sections: the one holding that port or data stops first.
      for (const old of this.background.filter((r) => r.port === port || r.data === data)) await this.stop(old);
      const run = await this.start(line, args, /^listening on http:\/\/127\.0\.0\.1:\d+$/);
      run.port = port;
      run.data = data;
      return;
    }
    if (task === "task example:chat") {
      if (!args.includes("--port")) args.push("--port", "0"); // 8080 may be taken here
      const run = await this.start(line, args, /^chat on http:\/\/127\.0\.0\.1:\d+\/\?node=http:\/\/\S+$/);
      const url = run.stdout.text.split("\n")[0]!.slice("chat on ".length);
      assertEquals(new URL(url).searchParams.get("node"), value("--node") ?? "http://127.0.0.1:7878", url);
      const res = await fetch(url);
      const page = await res.text();
      assert(res.ok && page.includes("<html"), `chat page at ${url}: ${res.status} ${page.slice(0, 200)}`);
      return;
    }
    if (task === "task xf" && args[2] === "tail") {
      const run = this.spawn(line, args);
      const io = Promise.all([drain(run.child.stdout, run.stdout), drain(run.child.stderr, run.stderr)]);
      const early = await Promise.race([run.done, new Promise<null>((r) => setTimeout(() => r(null), TAIL_MS))]);
      if (early) throw new Error(this.describe(run, `exited (${early.code}) instead of following`));
      await this.stop(run);
      await io;
      const first = run.stdout.text.split("\n")[0] ?? "";
      let event: { id?: string } = {};
      try {
        event = JSON.parse(first);
      } catch { /* checked below */ }
      assert(/^[0-9a-f]{64}$/.test(event.id ?? ""), this.describe(run, "no JSON event line"));
      return;
    }
    if (task === "task xf" && args[2] === "fsck") {
      // "node stopped": the node on that data directory stops first.
      for (const old of this.background.filter((r) => r.data === value("--data"))) await this.stop(old);
    }
    const out = await this.once(line, args);
    const json = () => JSON.parse(out.trim().split("\n").at(-1) ?? "null");
    if (sub === "group create" && !args.includes("--closed")) this.gid = json().group;
    if (args[2] === "publish") this.eventId = json().id;
  }

  need(v: string, name: string, line: string): string {
    if (!v) throw new Error(`README line "${line}" uses ${name} before any command printed one`);
    return v;
  }

  /** One README ```ts block, from a temp file with `./` imports pointing at the repository. */
  async typescript(block: Block): Promise<string> {
    const code = this.rewrite(block.code).replace(/from "\.\/([^"]+)"/g, (_, p) => `from "file://${ROOT}${p}"`);
    const file = `${this.tmp}/example-${block.line}.ts`;
    await Deno.writeTextFile(file, code);
    const written = `the ts example at README line ${block.line}`;
    const out = await this.once(written, [
      "run",
      "--check", // the README's command, type-checked too
      `--config=${ROOT}deno.json`,
      "--allow-read",
      "--allow-write",
      "--allow-net",
      "--allow-env",
      "--allow-ffi",
      "--allow-sys",
      file,
    ]);
    this.ran.push(written);
    // `console.log(…); // expected output` comments are checked.
    for (const m of block.code.matchAll(/console\.log\(.*\); \/\/ (.+)$/gm)) {
      assert(out.includes(m[1]!), `${written}: stdout ${JSON.stringify(out)} lacks ${JSON.stringify(m[1])}`);
    }
    return out;
  }

  /** The ```html page beside the bundle `deno task build` writes, in headless Chromium: a "hello" item appears. */
  async browser(block: Block): Promise<void> {
    const written = `the html example at README line ${block.line}`;
    if (!hasChromium) {
      if (inCi) throw new Error(`Cannot run ${written}: no Chromium at "${CHROMIUM}" (CI=true)`);
      console.warn(
        `readme_examples_test: ${written} skipped, no Chromium at ${CHROMIUM} (apt-get install -y chromium)`,
      );
      this.skipped.push(`${written} (no Chromium)`);
      return;
    }
    await this.once("deno task build", ["task", "build"]);
    const www = `${this.tmp}/www`;
    await Deno.mkdir(www, { recursive: true });
    await Deno.copyFile(`${ROOT}dist/xaeroflux-client.js`, `${www}/xaeroflux-client.js`);
    await Deno.writeTextFile(`${www}/index.html`, this.rewrite(block.code));
    const files: Record<string, string> = {
      "/": "index.html",
      "/index.html": "index.html",
      "/xaeroflux-client.js": "xaeroflux-client.js",
    };
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
      const f = files[new URL(req.url).pathname];
      if (!f) return new Response("Not found\n", { status: 404 });
      const type = f.endsWith(".js") ? "text/javascript" : "text/html; charset=utf-8";
      return new Response(await Deno.readFile(`${www}/${f}`), { headers: { "content-type": type } });
    });
    let browser: Browser | null = null;
    const log: string[] = [];
    try {
      browser = await puppeteer.launch({
        executablePath: CHROMIUM,
        ignoreDefaultArgs: true,
        args: [...CHROMIUM_ARGS, `--user-data-dir=${this.tmp}/profile`, "about:blank"],
        timeout: 15_000,
        protocolTimeout: 20_000,
        handleSIGINT: false,
        handleSIGTERM: false,
        handleSIGHUP: false,
      });
      const page = await browser.newPage();
      page.setDefaultTimeout(20_000);
      page.on("pageerror", (e) => log.push(`pageerror: ${(e as Error).message}`));
      page.on("console", (m) => m.type() === "error" && log.push(`console: ${m.text()}`));
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      try {
        await page.waitForFunction(
          () => [...document.querySelectorAll("#log li")].some((li) => / hello$|: hello$/.test(li.textContent ?? "")),
          { polling: 50 },
        );
      } catch (e) {
        const items = await page.$$eval("#log li", (els) => els.map((li) => li.textContent)).catch(() => []);
        throw new Error(
          `${written}: no "hello" item (${(e as Error).message}); items ${JSON.stringify(items)}; ${log}`,
        );
      }
      assert(/[#&]gid=[0-9a-f]{64}$/.test(page.url()), `${written}: the page did not keep its group: ${page.url()}`);
      this.ran.push(written);
    } finally {
      await browser?.close().catch(() => {});
      await server.shutdown();
    }
  }
}

/** The systemd unit: key=value lines, and ExecStart runs what `deno task start` runs. */
async function checkUnit(block: Block): Promise<void> {
  const values = new Map<string, string[]>();
  for (const raw of block.code.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || /^\[\w+\]$/.test(line)) continue;
    const m = /^([A-Za-z]+)=(.+)$/.exec(line);
    if (!m) throw new Error(`README systemd unit (line ${block.line}): not a key=value line: ${line}`);
    values.set(m[1]!, [...values.get(m[1]!) ?? [], m[2]!]);
  }
  const [exec] = values.get("ExecStart") ?? [];
  if (!exec) throw new Error("README systemd unit has no ExecStart");
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks as Record<string, string>;
  const [bin, ...unit] = exec.split(/\s+/);
  const [deno, ...task] = tasks.start!.split(/\s+/);
  assert(bin!.endsWith("/deno") && deno === "deno", `ExecStart ${exec}`);
  assertEquals(unit, task, "README systemd ExecStart differs from deno.json's start task");
  const main = await Deno.readTextFile(`${ROOT}net/main.ts`);
  for (const env of values.get("Environment") ?? []) {
    for (const [, name] of env.matchAll(/(?:^|\s)(\w+)=/g)) {
      assert(main.includes(`"${name}"`), `README systemd unit sets ${name}, which net/main.ts does not read`);
    }
  }
}

Deno.test({
  name: "README: every shell, TypeScript and browser example runs against a live node",
  // puppeteer keeps sockets and timers of its own; every process and server is closed in finally.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const t0 = performance.now();
    const readme = await Deno.readTextFile(`${ROOT}README.md`);
    const blocks = fencedBlocks(readme);
    const tmp = await Deno.makeTempDir({ prefix: "xf-readme-" });
    const p1 = freePort();
    let p2 = freePort();
    while (p2 === p1) p2 = freePort();
    const r = new Runner(tmp, p1, p2);
    const counts: Record<string, number> = {};
    try {
      await withDeadline(
        TEST_MS,
        "the README examples",
        (async () => {
          const friend = await r.once("deno task xf keygen --key friend.key", [
            "task",
            "xf",
            "keygen",
            "--key",
            `${tmp}/friend.key`,
          ]);
          r.key = JSON.parse(friend).publicKey;
          for (const block of blocks) {
            counts[block.lang] = (counts[block.lang] ?? 0) + 1;
            if (block.lang === "sh") {
              for (const line of block.code.split("\n")) await r.command(line);
            } else if (block.lang === "ts") {
              const out = await r.typescript(block);
              if (block.code.includes("./client/mod.ts")) {
                assert(out.includes("hello"), `the client example printed no "hello": ${JSON.stringify(out)}`);
              }
            } else if (block.lang === "html") await r.browser(block);
            else if (block.lang === "ini") await checkUnit(block);
          }
        })(),
      );
    } finally {
      await r.stopAll();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
    assert((counts.sh ?? 0) >= 3 && (counts.ts ?? 0) >= 2 && counts.html === 1 && counts.ini === 1, `blocks ${counts}`);
    console.log(
      `README examples: ${r.ran.length} run in ${Math.round(performance.now() - t0)} ms; not run: ${
        r.skipped.join("; ") || "none"
      }`,
    );
  },
});
