// The dashboard's failure groups and bulk retry in headless Chromium against the real
// `metro run --emulator`: two groups of parked messages are shown first, "Retry all N" on one asks
// with its count, a job's progress bar follows it to the end, and the other group stays.
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
const ADMIN = "bulk-admin-token";

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

test("a failure group is retried in bulk from the dashboard", { timeout: 150000 }, async (t) => {
  assert.ok(METRO, "METRO_BIN must name the metro binary");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "metro-dashboard-bulk-"));
  const fixed = path.join(dir, "fixed");
  const handler = path.join(dir, "orders.sh");
  // Two ways to fail, each with numbers that differ from run to run.
  fs.writeFileSync(handler, `#!/bin/sh
body=$(cat)
case "$body" in
  *'"kind":"a"'*) if [ -e ${fixed} ]; then exit 0; fi
    echo "order $$ not found in 'warehouse-$(($$ % 7))'" >&2; exit 1;;
  *) echo "timed out after $$ ms talking to 10.0.0.$(($$ % 250))" >&2; exit 1;;
esac
`, { mode: 0o755 });
  const config = path.join(dir, "metro.toml");
  fs.writeFileSync(config, `
[metro]
workers = 4
ledger = "sqlite://${path.join(dir, "ledger.db")}"

[[subscriptions]]
topic_name = "orders"
subscription_name = "billing"
connection_string = "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"

  [[subscriptions.handlers]]
  subject = "Orders/**"
  glob = true
  exec = ["${handler}"]
  max_attempts = 1

[admin]
listen = "127.0.0.1:0"
tokens = [{ name = "ops", token = "${ADMIN}", role = "admin" }]
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
  for (const kind of ["a", "b"]) {
    execFileSync(METRO, ["publish", "--connection-string", connection, "--topic", "orders",
      "--count", "20", "--body", JSON.stringify({ subject: "Orders/Created", kind })]);
  }
  const groups = await waitFor(async () => {
    const { items } = await api("/failures");
    return items.length === 2 && items.every((g) => g.count === 20) && items;
  }, 60000, "two groups of 20");
  const a = groups.find((g) => g.error.startsWith("exited with <n>: order <n> not found"));
  const b = groups.find((g) => g !== a);
  assert.ok(a, JSON.stringify(groups));
  fs.writeFileSync(fixed, "");  // The first way of failing is fixed; its group can be retried.

  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.getByTestId("token").fill(ADMIN);
  await page.getByTestId("save-token").click();
  await page.getByTestId("who").filter({ hasText: "ops (admin)" }).waitFor();

  // The groups come first on the page, each with its count.
  await page.getByTestId("group-count-" + a.id).filter({ hasText: "20" }).waitFor();
  await page.getByTestId("group-count-" + b.id).filter({ hasText: "20" }).waitFor();
  const first = await page.locator("main section").first().locator("h2").textContent();
  assert.match(first, /Failure groups/);

  // "Show" filters the list by the group.
  await page.getByTestId("group-show-" + a.id).click();
  await page.getByTestId("filter-group").waitFor();
  await waitFor(async () => (await page.locator("tr.message").count()) === 20, 10000, "20 rows of the group");
  await page.locator("tr.message").first().click();
  await page.getByTestId("field-trace-parent").filter({ hasText: /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/ }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-groups.png"), fullPage: true });

  // Retry all 20: the confirmation names the count; the job's progress bar follows it.
  let asked = "";
  page.once("dialog", (dialog) => { asked = dialog.message(); dialog.accept(); });
  await page.getByTestId("group-retry-" + a.id).click();
  await page.getByTestId("jobs").locator("progress").first().waitFor();
  assert.match(asked, /Retry all 20 messages of the group/);
  const job = await waitFor(async () => (await api("/jobs")).items[0], 10000, "the job");
  await page.getByTestId("job-state-" + job.id).filter({ hasText: "completed" }).waitFor({ timeout: 30000 });
  const progress = page.getByTestId("job-progress-" + job.id);
  assert.strictEqual(await progress.getAttribute("value"), "20");
  assert.strictEqual(await progress.getAttribute("max"), "20");
  assert.strictEqual(await page.getByTestId("job-count-" + job.id).textContent(), "20 / 20");

  // The group is gone once its messages completed; the other stays.
  await waitFor(async () => (await api("/deferred?state=completed&limit=100")).items.length === 20,
    30000, "20 completed");
  await page.getByTestId("group-" + a.id).waitFor({ state: "detached", timeout: 10000 });
  await page.getByTestId("group-count-" + b.id).filter({ hasText: "20" }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, "dashboard-bulk-retry.png"), fullPage: true });
  assert.deepStrictEqual(errors, []);

  metro.kill("SIGTERM");
  assert.strictEqual(await exited, 0, output);
});
