// Starts `metro emulator` on free ports for a test file and stops it afterwards.
"use strict";
const { spawn } = require("node:child_process");
const path = require("node:path");
const readline = require("node:readline");

const root = path.resolve(__dirname, "..", "..", "..");

async function startEmulator(extraArgs = []) {
  const binary = process.env.METRO_BIN || path.join(root, "build", "dev", "bin", "metro");
  const child = spawn(
    binary,
    ["emulator", "--config", path.join(root, "tests", "conformance", "bus.toml"), "--port", "0",
     ...extraArgs],
    { stdio: ["ignore", "pipe", "inherit"] });
  const lines = readline.createInterface({ input: child.stdout });
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the emulator did not start in 10 s")), 10000);
    child.once("exit", (code) => reject(new Error(`the emulator exited with ${code}`)));
    lines.on("line", (line) => {
      const m = /amqp=(\d+)(?: amqps=(\d+) cert=(\S+))?/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve({ port: Number(m[1]), tlsPort: m[2] && Number(m[2]), cert: m[3] });
      }
    });
  });
  return {
    ...ready,
    connectionString: (key = "SAS_KEY_VALUE") =>
      `Endpoint=sb://localhost:${ready.port};SharedAccessKeyName=RootManageSharedAccessKey;` +
      `SharedAccessKey=${key};UseDevelopmentEmulator=true`,
    stop: (signal = "SIGTERM") =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", resolve);
        child.kill(signal);
      }),
  };
}

/// Polls `check` until it returns a truthy value or `timeoutMs` passes.
async function waitFor(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

module.exports = { startEmulator, waitFor, root };
