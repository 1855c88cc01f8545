/**
 * The transport under every actor: anything with `postMessage` and
 * `addEventListener("message")` (comlink's Endpoint). A Worker, the global
 * scope inside a Worker, and the two ports of one MessageChannel are all
 * endpoints, so actor logic runs the same in-process and across Workers.
 *
 * @module
 */

/** A message transport. */
export interface Endpoint {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  addEventListener(type: "message", listener: (ev: MessageEvent) => void): void;
  removeEventListener?(type: "message", listener: (ev: MessageEvent) => void): void;
}

/** Messages from a parent to a child actor. */
export type ToChild =
  | { t: "init"; config: unknown }
  | { t: "data"; seq: number; msg: unknown }
  | { t: "call"; id: number; msg: unknown }
  | { t: "reply"; id: number; ok: true; value: unknown }
  | { t: "reply"; id: number; ok: false; error: { name: string; code: string; message: string } }
  | { t: "stop" };

/** Messages from a child actor to its parent. */
export type FromChild =
  | { t: "ready" }
  | { t: "stopped" }
  | { t: "credit"; seq: number }
  | { t: "emit"; to: string; msg: unknown }
  | { t: "ask"; id: number; to: string; msg: unknown; timeoutMs: number }
  | { t: "reply"; id: number; ok: true; value: unknown }
  | { t: "reply"; id: number; ok: false; error: { name: string; code: string; message: string } }
  | { t: "crash"; error: { name: string; code: string; message: string } };
