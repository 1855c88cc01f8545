// Worker entry of the ingest stage: serve it before any await.
import { serveStage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { ingestStage } from "./ingest.ts";

serveStage(self as unknown as Endpoint, ingestStage);
