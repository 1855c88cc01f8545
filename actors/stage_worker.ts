// Worker entry of every stage: host it before any await (the init message names the stage).
import { host, type ParentEndpoint } from "./host.ts";

host(self as unknown as ParentEndpoint);
