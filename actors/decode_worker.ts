// Worker entry of the decode stage: serve it before any await.
import { serveStage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { decodeStage } from "./decode.ts";

serveStage(self as unknown as Endpoint, decodeStage);
