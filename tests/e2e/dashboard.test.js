// The dashboard in headless Chromium (Debian's, driven by playwright-core) against the real
// `metro run --emulator`: load it, filter, open a parked message, retry it after the handler was
// fixed, and see its state change. Saves a screenshot as a test artifact.
"use strict";

const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { spawn, execFileSync } = require("node:child_process");
const { chromium } = require("playwright-core");

const METRO = process.env.METRO_BIN;
const ARTIFACTS = process.env.METRO_ARTIFACT_DIR || os.tmpdir();
fs.mkdirSync(ARTIFACTS, { recursive: true });
const ADMIN = "dashboard-admin-token";
const VIEWER = "dashboard-viewer-token";

function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = async () => {
      let value;
      try {
        value = await predicate();
      } catch (e) {
        value = undefined;
      }
      if (value) return resolve(value);
      if (Date.now() > deadline) return reject(new Error("timed out waiting for " + what));
      setTimeout(poll, 50);
    };
    poll();
  });
}

test("the dashboard lists, filters, shows and retries a parked message", { timeout: 120000 }, async (t) => {
  assert.ok(METRO, "METRO_BIN must name the metro binary");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "metro-dashboard-"));
  const fixed = path.join(dir, "fixed");
  const handler = path.join(dir, "joke-handler.sh");
  fs.writeFileSync(handler, `#!/bin/sh\ncat > /dev/null\nif [ -e ${fixed} ]; then exit 0; fi\n` +
    `echo "the joke service is down" >&2\nexit 1\n`, { mode: 0o755 });
  const config = path.join(dir, "metro.toml");
  fs.writeFileSync(config, `
[metro]
workers = 2
ledger = "sqlite://${path.join(dir, "ledger.db")}"

[[subscriptions]]
topic_name = "metro-demo"
subscription_name = "sub-dashboard"
connection_string = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"

  [[subscriptions.handlers]]
  subject = "MetroDemo/Type/GeekJokes"
  exec = ["${handler}"]
  max_attempts = 2
  backoff = "10ms"

  [[subscriptions.handlers]]
  subject = "MetroDemo/Type/Fine"
  exec = ["true"]

[admin]
listen = "127.0.0.1:0"
tokens = [{ name = "ops", token = "${ADMIN}", role = "admin" },
          { name = "wall", token = "${VIEWER}", role = "viewer" }]
`);

  const metro = spawn(METRO, ["run", "--config", config, "--emulator", "--emulator-port", "0"],
    { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  metro.stdout.on("data", (d) => { output += d; });
  metro.stderr.on("data", (d) => { output += d; });
  const exited = new Promise((resolve) => metro.on("exit", (code) => resolve(code)));
  t.after(() => { metro.kill("SIGKILL"); fs.rmSync(dir, { recursive: true, force: true }); });

  await waitFor(() => output.includes("metro running"), 20000, "metro to start:\n" + output);
  const url = output.match(/metro admin listening: (\S+)/)[1];
  const connection = output.match(/connection string: (\S+)/)[1];
  const api = async (p) => {
    const res = await fetch(url + "api/v1" + p, { headers: { Authorization: "Bearer " + ADMIN } });
    return res.json();
  };

  for (const [subject, joke] of [["MetroDemo/Type/GeekJokes", "a joke about UDP"],
    ["MetroDemo/Type/GeekJokes", "a joke about TCP"], ["MetroDemo/Type/Fine", "fine"]]) {
    execFileSync(METRO, ["publish", "--connection-string", connection, "--topic", "metro-demo",
      "--correlation-id", "corr-" + joke.length, "--body", JSON.stringify({ subject, joke })]);
  }
  await waitFor(async () => (await api("/deferred?state=failed")).items.length === 2 &&
    (await api("/deferred?state=completed")).items.length === 1, 30000, "two parked messages");
  fs.writeFileSync(fixed, "");  // The handler is fixed; the parked messages wait for a retry.

  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // A viewer sees everything and cannot act.
  await page.goto(url);
  await page.getByTestId("token").fill(VIEWER);
  await page.getByTestId("save-token").click();
  await page.getByTestId("who").filter({ hasText: "wall (viewer, read only)" }).waitFor();
  await page.getByTestId("message-1").click();
  await page.getByTestId("detail").waitFor();
  assert.strictEqual(await page.getByTestId("retry").isVisible(), false);

  // An admin filters, opens a parked message, retries it and sees it completed.
  await page.getByTestId("token").fill(ADMIN);
  await page.getByTestId("save-token").click();
  await page.getByTestId("who").filter({ hasText: "ops (admin)" }).waitFor();
  await page.getByTestId("subscriptions").getByText("connected").waitFor();
  // The instances sharing the ledger: this one, live.
  await page.getByTestId("instances").getByText("(this one)").waitFor();
  await page.getByTestId("instances").getByText("live").waitFor();
  await page.getByTestId("filter-state").selectOption("failed");
  await page.getByTestId("apply").click();
  await waitFor(async () => (await page.locator("tr.message").count()) === 2, 10000, "2 failed rows");
  await page.getByTestId("filter-subject").fill("MetroDemo/Type/Fine");
  await page.getByTestId("filter-state").selectOption("");
  await page.getByTestId("apply").click();
  await waitFor(async () => (await page.locator("tr.message").count()) === 1, 10000, "1 row for Fine");
  await page.getByTestId("filter-subject").fill("");
  await page.getByTestId("filter-state").selectOption("failed");
  await page.getByTestId("apply").click();
  await waitFor(async () => (await page.locator("tr.message").count()) === 2, 10000, "2 failed rows");

  await page.getByTestId("message-1").click();
  await page.getByTestId("field-state").filter({ hasText: "failed" }).waitFor();
  assert.match(await page.getByTestId("body").textContent(), /a joke about UDP/);
  assert.match(await page.getByTestId("field-last-error").textContent(), /the joke service is down/);
  assert.strictEqual(await page.getByTestId("runs").locator("tr").count(), 2);
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-failed.png"), fullPage: true });

  page.once("dialog", (dialog) => dialog.accept());
  await page.getByTestId("retry").click();
  await page.getByTestId("field-state").filter({ hasText: "completed" }).waitFor({ timeout: 20000 });
  assert.strictEqual(await page.getByTestId("runs").locator("tr").count(), 3);
  assert.strictEqual(await page.getByTestId("retry").isDisabled(), true);
  const after = await api("/deferred/metro-demo/sub-dashboard/1");
  assert.strictEqual(after.state, "completed");
  await page.getByTestId("filter-state").selectOption("");
  await page.getByTestId("apply").click();
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard.png"), fullPage: true });

  // Bodies from outside, as metro shows them (text when nested too deep to format) or as an
  // older or hostile server might answer: bounded before they are parsed, never walked.
  const detailPath = "**/api/v1/deferred/metro-demo/sub-dashboard/2";
  const detail = await api("/deferred/metro-demo/sub-dashboard/2");
  const deepText = "[".repeat(200000) + "]".repeat(200000);
  await page.route(detailPath, (route) => route.fulfill({
    contentType: "application/json", body: JSON.stringify({ ...detail, body: deepText }) }));
  await page.getByTestId("message-2").click();
  await page.getByTestId("body-note").filter({ hasText: "shown as text" }).waitFor();
  const shown = await page.getByTestId("body").textContent();
  assert.ok(shown.startsWith("[[[") && shown.length < 256 * 1024 + 16, `body shown: ${shown.length} characters`);
  await page.unroute(detailPath);
  await page.route(detailPath, (route) => route.fulfill({
    contentType: "application/json", body: '{"topic":"metro-demo","body":' + deepText + "}" }));
  await page.getByTestId("message-2").click();
  await page.getByTestId("notice").filter({ hasText: "nested too deep" }).waitFor();
  await page.unroute(detailPath);
  assert.deepStrictEqual(errors, []);

  metro.kill("SIGTERM");
  assert.strictEqual(await exited, 0, output);
});
