// Worker entry of every stage. Its first message is the MessagePort the stage talks to its parent on (the init
// message then names the stage): what the stage posts on a port before it is terminated still arrives, where a
// Worker's own postMessage queue is dropped at terminate (with it an acknowledgement whose credit had gone).
import { host, type ParentEndpoint } from "./host.ts";

const scope = self as unknown as { onmessage: ((ev: MessageEvent) => void) | null };
scope.onmessage = (ev: MessageEvent) => {
  scope.onmessage = null;
  const port = ev.data as MessagePort;
  host(port as unknown as ParentEndpoint);
  port.start();
};
