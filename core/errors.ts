export * from "../storage/errors.ts";
