// Worker entry of the wal_flush stage: serve it before any await.
import { serveStage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { walFlushStage } from "./wal_flush.ts";

serveStage(self as unknown as Endpoint, walFlushStage);
