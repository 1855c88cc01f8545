// Debian's Chromium for the browser tests: where it is, how it is started here, and whether it must be there.
// A test is skipped with a message when Chromium is missing, except under CI, where it fails.

/** Debian's Chromium (`apt-get install -y chromium`; `.ci/run` installs it as root). */
export const CHROMIUM = "/usr/bin/chromium";

/** Headless, and nothing that reaches outside this machine (its connections would be refused here). */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Whether Chromium is installed. */
export const hasChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

/** Whether this is CI, where a missing Chromium fails the browser tests instead of skipping them. */
export const inCi = Deno.env.get("CI") === "true";
