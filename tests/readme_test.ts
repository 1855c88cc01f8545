import { assert } from "@std/assert";
import * as limits from "../core/limits.ts";
import { ERROR_STATUS } from "../core/errors.ts";

const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
const row = (name: string, value: string) => new RegExp(`\\|\\s*\`${name}\`\\s*\\|\\s*${value}\\s*\\|`);

Deno.test("README lists every limit with its default", () => {
  for (const [name, value] of Object.entries(limits.LIMITS)) {
    assert(row(name, value.toLocaleString("en-US")).test(readme), `README lacks limit ${name} = ${value}`);
  }
});

Deno.test("README lists every fixed bound of core/limits.ts with its value", () => {
  const fixed = Object.entries(limits).filter(([, v]) => typeof v === "number") as [string, number][];
  assert(fixed.length > 0, "core/limits.ts exports no fixed bound");
  for (const [name, value] of fixed) {
    assert(row(name, value.toLocaleString("en-US")).test(readme), `README lacks fixed bound ${name} = ${value}`);
  }
});

Deno.test("README lists every error code with its status", () => {
  for (const [code, status] of Object.entries(ERROR_STATUS)) {
    assert(row(code, String(status)).test(readme), `README lacks error code ${code} (${status})`);
  }
});
