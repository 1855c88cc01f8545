import { assert } from "@std/assert";
import { LIMITS } from "../actors/limits.ts";
import { ERROR_STATUS } from "../storage/errors.ts";

const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));

Deno.test("README lists every limit with its default", () => {
  for (const [name, value] of Object.entries(LIMITS)) {
    assert(
      readme.includes(`| \`${name}\` | ${value.toLocaleString("en-US")} |`),
      `README lacks limit ${name} = ${value}`,
    );
  }
});

Deno.test("README lists every error code with its status", () => {
  for (const [code, status] of Object.entries(ERROR_STATUS)) {
    assert(readme.includes(`| \`${code}\` | ${status} |`), `README lacks error code ${code} (${status})`);
  }
});
