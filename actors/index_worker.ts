// Worker entry of the index stage: serve it before any await.
import { serveStage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { indexStage } from "./index_stage.ts";

serveStage(self as unknown as Endpoint, indexStage);
