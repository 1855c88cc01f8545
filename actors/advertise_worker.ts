// Worker entry of the advertise stage: serve it before any await.
import { serveStage } from "./runtime.ts";
import type { Endpoint } from "./endpoint.ts";
import { advertiseStage } from "./advertise.ts";

serveStage(self as unknown as Endpoint, advertiseStage);
