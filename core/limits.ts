// Temporary: replaced by the layout change.
export * from "../actors/limits.ts";
