// The id-sum arithmetic (merkle/_sum.ts): the word-at-a-time page sums equal adding one 32-byte id at a time,
// aligned or not, including sums that wrap past 2^256.
import { assertEquals } from "@std/assert";
import { prefixSumsInto, sumAddBytes, sumAddMany } from "../merkle/_sum.ts";
import { prng } from "../merkle/_testing.ts";

Deno.test("sumAddMany() and prefixSumsInto() equal adding one id at a time, aligned or not", () => {
  const rand = prng(41);
  for (const n of [0, 1, 2, 7, 96, 128, 512]) {
    for (const shift of [0, 1, 4]) {
      const buf = new Uint8Array(shift + n * 32);
      // Mostly 0xff bytes, so that limbs carry (and the total wraps past 2^256).
      for (let i = 0; i < buf.length; i++) buf[i] = rand.int(4) === 0 ? rand.int(256) : 0xff;
      const bytes = buf.subarray(shift);
      const want = new Uint32Array(8).fill(0xfffffff0);
      const wantPrefix = new Uint32Array((n + 1) * 8);
      const acc = new Uint32Array(8);
      for (let j = 0; j < n; j++) {
        sumAddBytes(want, bytes, j * 32);
        sumAddBytes(acc, bytes, j * 32);
        wantPrefix.set(acc, (j + 1) * 8);
      }
      const got = new Uint32Array(8).fill(0xfffffff0);
      sumAddMany(got, bytes, 0, n);
      assertEquals([...got], [...want], `sum of ${n}, shift ${shift}`);
      const prefix = new Uint32Array((n + 1) * 8);
      prefixSumsInto(prefix, bytes, 0, n);
      assertEquals([...prefix], [...wantPrefix], `prefix sums of ${n}, shift ${shift}`);
    }
  }
});
