export { fromHex, toHex } from "../storage/ed25519.ts";
