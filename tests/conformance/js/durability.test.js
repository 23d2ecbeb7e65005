// With --data-dir the emulator keeps every accepted message and its state across a restart, even
// after kill -9: a send is acknowledged only once it is stored.
"use strict";
const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { ServiceBusClient } = require("@azure/service-bus");
const { startEmulator } = require("./emulator.js");

async function receiveAll(receiver, count, timeoutMs = 5000) {
  const got = [];
  const deadline = Date.now() + timeoutMs;
  while (got.length < count && Date.now() < deadline) {
    got.push(...(await receiver.receiveMessages(count - got.length, { maxWaitTimeInMs: 500 })));
  }
  return got;
}

test("messages, deferral, dead-letters and sequence numbers survive kill -9", async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "metro-emulator-data-"));
  let emulator = await startEmulator(["--data-dir", dataDir]);
  let client = new ServiceBusClient(emulator.connectionString());
  const sender = client.createSender("orders");
  await sender.sendMessages([
    { body: "keep-1", applicationProperties: { colour: "red" } },
    { body: "keep-2" },
    { body: "defer-me" },
    { body: "dead" },
  ]);
  const receiver = client.createReceiver("orders", "all");
  const got = await receiveAll(receiver, 4);
  const byBody = Object.fromEntries(got.map((m) => [m.body, m]));
  await receiver.deferMessage(byBody["defer-me"]);
  await receiver.deadLetterMessage(byBody["dead"], { deadLetterReason: "Test" });
  await receiver.abandonMessage(byBody["keep-1"]);
  // keep-2 stays locked when the emulator dies: its lock is lost, the message is not.
  const lastSequence = Math.max(...got.map((m) => m.sequenceNumber.toNumber()));
  await emulator.stop("SIGKILL");
  await client.close().catch(() => {});

  emulator = await startEmulator(["--data-dir", dataDir]);
  client = new ServiceBusClient(emulator.connectionString());
  try {
    const again = client.createReceiver("orders", "all");
    const back = await receiveAll(again, 2);
    assert.deepEqual(back.map((m) => m.body).sort(), ["keep-1", "keep-2"]);
    const keep1 = back.find((m) => m.body === "keep-1");
    assert.equal(keep1.deliveryCount, 1, "the abandon was counted");
    assert.equal(keep1.applicationProperties.colour, "red");
    for (const m of back) await again.completeMessage(m);
    const [deferred] = await again.receiveDeferredMessages(byBody["defer-me"].sequenceNumber);
    assert.equal(deferred.body, "defer-me");
    await again.completeMessage(deferred);
    const dlq = client.createReceiver("orders", "all", { subQueueType: "deadLetter" });
    const [dead] = await receiveAll(dlq, 1);
    assert.equal(dead.body, "dead");
    assert.equal(dead.deadLetterReason, "Test");
    await dlq.completeMessage(dead);
    await client.createSender("orders").sendMessages({ body: "after" });
    const [after] = await receiveAll(again, 1);
    assert.ok(after.sequenceNumber.toNumber() > lastSequence, "sequence numbers continue");
    await again.completeMessage(after);
  } finally {
    await client.close();
    await emulator.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
