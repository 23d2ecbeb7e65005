// The official JS SDK (@azure/service-bus) against the metro emulator, over plain AMQP with
// UseDevelopmentEmulator=true. Every scenario asserts what came back.
"use strict";
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { ServiceBusClient } = require("@azure/service-bus");
const { createSasTokenProvider } = require("@azure/core-amqp");
const { startEmulator, waitFor } = require("./emulator.js");

let emulator;
let client;

before(async () => {
  emulator = await startEmulator();
  client = new ServiceBusClient(emulator.connectionString());
});

after(async () => {
  await client?.close();
  await emulator?.stop();
});

async function receiveAll(receiver, count, timeoutMs = 5000) {
  const got = [];
  const deadline = Date.now() + timeoutMs;
  while (got.length < count && Date.now() < deadline) {
    const batch = await receiver.receiveMessages(count - got.length, { maxWaitTimeInMs: 500 });
    got.push(...batch);
  }
  return got;
}

test("send single and batch to a topic; every field arrives", async () => {
  const sender = client.createSender("orders");
  await sender.sendMessages({
    body: { subject: "MetroDemo/Type/GeekJokes", joke: "knock knock" },
    subject: "order/single",
    messageId: "m-1",
    correlationId: "corr-1",
    contentType: "application/json",
    applicationProperties: { colour: "blue", quantity: 1 },
  });
  const batch = await sender.createMessageBatch();
  for (let i = 0; i < 3; i++) {
    assert.ok(batch.tryAddMessage({ body: `b${i}`, subject: "order/batch", messageId: `b-${i}` }));
  }
  await sender.sendMessages(batch);
  await sender.close();

  const receiver = client.createReceiver("orders", "all");
  const messages = await receiveAll(receiver, 4);
  assert.equal(messages.length, 4);
  const [first, ...rest] = messages;
  assert.deepEqual(first.body, { subject: "MetroDemo/Type/GeekJokes", joke: "knock knock" });
  assert.equal(first.subject, "order/single");
  assert.equal(first.messageId, "m-1");
  assert.equal(first.correlationId, "corr-1");
  assert.equal(first.contentType, "application/json");
  assert.deepEqual(first.applicationProperties, { colour: "blue", quantity: 1 });
  assert.equal(first.deliveryCount, 0);
  assert.ok(first.sequenceNumber.toNumber() >= 1);
  assert.ok(first.enqueuedTimeUtc instanceof Date);
  assert.deepEqual(rest.map((m) => m.body), ["b0", "b1", "b2"]);
  assert.deepEqual(rest.map((m) => m.messageId), ["b-0", "b-1", "b-2"]);
  const numbers = messages.map((m) => m.sequenceNumber.toNumber());
  assert.deepEqual([...numbers].sort((a, b) => a - b), numbers, "sequence numbers increase");
  for (const m of messages) await receiver.completeMessage(m);
  await receiver.close();
});

test("fan-out by correlation and SQL rules", async () => {
  const sender = client.createSender("orders");
  await sender.sendMessages([
    { body: "red-small", subject: "order/1", applicationProperties: { colour: "red", quantity: 2 } },
    { body: "blue-big", subject: "order/2", applicationProperties: { colour: "blue", quantity: 50 } },
    { body: "red-big-wrong-label", subject: "invoice/3",
      applicationProperties: { colour: "red", quantity: 99 } },
  ]);
  await sender.close();
  const bodies = async (subscription, n) => {
    const receiver = client.createReceiver("orders", subscription);
    const got = await receiveAll(receiver, n, n === 0 ? 1000 : 5000);
    for (const m of got) await receiver.completeMessage(m);
    await receiver.close();
    return got.map((m) => m.body).sort();
  };
  assert.deepEqual(await bodies("red", 2), ["red-big-wrong-label", "red-small"]);
  assert.deepEqual(await bodies("big", 1), ["blue-big"]);
  assert.deepEqual(await bodies("all", 3), ["blue-big", "red-big-wrong-label", "red-small"]);
});

test("peek-lock receive and complete removes the message", async () => {
  await client.createSender("basic").sendMessages({ body: "complete me" });
  const receiver = client.createReceiver("basic");
  const [m] = await receiveAll(receiver, 1);
  assert.equal(m.body, "complete me");
  assert.match(m.lockToken, /^[0-9a-f-]{36}$/);
  assert.ok(m.lockedUntilUtc > new Date());
  await receiver.completeMessage(m);
  const peeked = await receiver.peekMessages(10);
  assert.equal(peeked.length, 0);
  await assert.rejects(receiver.completeMessage(m), /settled|lock/i);
  await receiver.close();
});

test("abandon redelivers with a higher delivery count; max delivery count dead-letters", async () => {
  await client.createSender("abandon").sendMessages({ body: "unlucky" });
  const receiver = client.createReceiver("abandon");
  const counts = [];
  for (let i = 0; i < 3; i++) {
    const [m] = await receiveAll(receiver, 1);
    counts.push(m.deliveryCount);
    await receiver.abandonMessage(m);
  }
  assert.deepEqual(counts, [0, 1, 2]);
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 })).length, 0);
  const dlq = client.createReceiver("abandon", { subQueueType: "deadLetter" });
  const [dead] = await receiveAll(dlq, 1);
  assert.equal(dead.body, "unlucky");
  assert.equal(dead.deadLetterReason, "MaxDeliveryCountExceeded");
  assert.match(dead.deadLetterErrorDescription, /3 delivery attempts/);
  await dlq.completeMessage(dead);
  await dlq.close();
  await receiver.close();
});

test("defer, receiveDeferredMessages by sequence number, complete", async () => {
  await client.createSender("defer").sendMessages([{ body: "d1" }, { body: "d2" }]);
  const receiver = client.createReceiver("defer");
  const received = await receiveAll(receiver, 2);
  for (const m of received) await receiver.deferMessage(m);
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 500 })).length, 0,
    "deferred messages are not received again");
  const numbers = received.map((m) => m.sequenceNumber);
  const deferred = await receiver.receiveDeferredMessages(numbers);
  assert.deepEqual(deferred.map((m) => m.body).sort(), ["d1", "d2"]);
  assert.ok(deferred.every((m) => m.state === "deferred"));
  for (const m of deferred) await receiver.completeMessage(m);
  assert.equal((await receiver.peekMessages(10, { fromSequenceNumber: numbers[0] })).length, 0);
  await assert.rejects(receiver.receiveDeferredMessages(numbers));
  await receiver.close();
});

test("dead-letter with reason and description, read back from the dead-letter queue", async () => {
  await client.createSender("dead-letter").sendMessages({ body: "poison", messageId: "p-1" });
  const receiver = client.createReceiver("dead-letter");
  const [m] = await receiveAll(receiver, 1);
  await receiver.deadLetterMessage(m, {
    deadLetterReason: "MalformedBody",
    deadLetterErrorDescription: "the body is not JSON",
  });
  const dlq = client.createReceiver("dead-letter", { subQueueType: "deadLetter" });
  const [dead] = await receiveAll(dlq, 1);
  assert.equal(dead.body, "poison");
  assert.equal(dead.messageId, "p-1");
  assert.equal(dead.deadLetterReason, "MalformedBody");
  assert.equal(dead.deadLetterErrorDescription, "the body is not JSON");
  assert.equal(dead.sequenceNumber.toNumber(), m.sequenceNumber.toNumber());
  await dlq.completeMessage(dead);
  await dlq.close();
  await receiver.close();
});

test("peekMessages shows a deferred message's state and changes nothing", async () => {
  const sender = client.createSender("peek");
  await sender.sendMessages([{ body: "p-active" }, { body: "p-deferred" }]);
  await sender.scheduleMessages({ body: "p-scheduled" }, new Date(Date.now() + 3600 * 1000));
  const receiver = client.createReceiver("peek");
  const got = await receiveAll(receiver, 2);
  const toDefer = got.find((m) => m.body === "p-deferred");
  await receiver.deferMessage(toDefer);
  await receiver.abandonMessage(got.find((m) => m.body === "p-active"));
  const peeked = await receiver.peekMessages(10, { fromSequenceNumber: got[0].sequenceNumber });
  const states = Object.fromEntries(peeked.map((m) => [m.body, m.state]));
  assert.deepEqual(states, { "p-active": "active", "p-deferred": "deferred",
    "p-scheduled": "scheduled" });
  assert.ok(peeked.every((m) => m.lockToken === undefined));
  const again = await receiver.peekMessages(10, { fromSequenceNumber: got[0].sequenceNumber });
  assert.equal(again.length, 3);
  await receiver.close();
});

test("renewMessageLock moves lockedUntil", async () => {
  await client.createSender("renew").sendMessages({ body: "hold" });
  const receiver = client.createReceiver("renew", { maxAutoLockRenewalDurationInMs: 0 });
  const [m] = await receiveAll(receiver, 1);
  const before = m.lockedUntilUtc.getTime();
  await new Promise((r) => setTimeout(r, 1100));
  const renewed = await receiver.renewMessageLock(m);
  assert.ok(renewed.getTime() >= before + 1000, `${renewed.toISOString()} after ${before}`);
  assert.equal(m.lockedUntilUtc.getTime(), renewed.getTime());
  await receiver.completeMessage(m);
  await receiver.close();
});

test("an expired lock redelivers the message with a higher delivery count", async () => {
  await client.createSender("expiry").sendMessages({ body: "slow" });
  const receiver = client.createReceiver("expiry", { maxAutoLockRenewalDurationInMs: 0 });
  const [first] = await receiveAll(receiver, 1);
  assert.equal(first.deliveryCount, 0);
  const [second] = await receiveAll(receiver, 1, 5000);
  assert.equal(second.body, "slow");
  assert.equal(second.deliveryCount, 1);
  assert.equal(second.sequenceNumber.toNumber(), first.sequenceNumber.toNumber());
  await assert.rejects(receiver.completeMessage(first));
  await receiver.completeMessage(second);
  await receiver.close();
});

test("schedule and cancel", async () => {
  const sender = client.createSender("schedule");
  const [soon] = await sender.scheduleMessages({ body: "soon" }, new Date(Date.now() + 1000));
  const [later] = await sender.scheduleMessages({ body: "later" }, new Date(Date.now() + 3600e3));
  assert.ok(later.toNumber() > soon.toNumber());
  await sender.cancelScheduledMessages(later);
  const receiver = client.createReceiver("schedule");
  assert.equal((await receiver.receiveMessages(1, { maxWaitTimeInMs: 300 })).length, 0,
    "not visible before its time");
  const [m] = await receiveAll(receiver, 1, 5000);
  assert.equal(m.body, "soon");
  assert.equal(m.sequenceNumber.toNumber(), soon.toNumber());
  await receiver.completeMessage(m);
  assert.equal((await receiver.peekMessages(10, { fromSequenceNumber: later })).length, 0,
    "the cancelled message is gone");
  await receiver.close();
});

test("receive-and-delete takes messages without locks", async () => {
  await client.createSender("receive-and-delete").sendMessages([{ body: "x" }, { body: "y" }]);
  const receiver = client.createReceiver("receive-and-delete", { receiveMode: "receiveAndDelete" });
  const got = await receiveAll(receiver, 2);
  assert.deepEqual(got.map((m) => m.body), ["x", "y"]);
  assert.ok(got.every((m) => m.lockToken === undefined));
  assert.equal((await receiver.peekMessages(10)).length, 0);
  await receiver.close();
});

test("rules: add, list, remove", async () => {
  const rules = client.createRuleManager("rules", "managed");
  const initial = await rules.listRules().byPage().next();
  assert.deepEqual(initial.value.map((r) => r.name), ["$Default"]);
  await rules.createRule("only-green", { correlationId: "green", applicationProperties: { k: 1 } });
  await rules.createRule("sql-rule", { sqlExpression: "size > 3" });
  await rules.deleteRule("$Default");
  const listed = [];
  for await (const rule of rules.listRules()) listed.push(rule);
  assert.deepEqual(listed.map((r) => r.name), ["only-green", "sql-rule"]);
  assert.equal(listed[0].filter.correlationId, "green");
  assert.equal(listed[1].filter.sqlExpression, "size > 3");
  await assert.rejects(rules.createRule("sql-rule", { sqlExpression: "1=1" }));

  const sender = client.createSender("rules");
  await sender.sendMessages([
    { body: "green", correlationId: "green", applicationProperties: { k: 1 } },
    { body: "big", applicationProperties: { size: 5 } },
    { body: "neither", applicationProperties: { size: 1 } },
  ]);
  const receiver = client.createReceiver("rules", "managed");
  const got = await receiveAll(receiver, 2);
  assert.deepEqual(got.map((m) => m.body).sort(), ["big", "green"]);
  for (const m of got) await receiver.completeMessage(m);
  await rules.deleteRule("only-green");
  await rules.deleteRule("sql-rule");
  await receiver.close();
});

test("a wrong key fails with an authorisation error", async () => {
  // The SDK retries authorisation failures (keys may be rotating); once is enough here.
  const bad = new ServiceBusClient(emulator.connectionString("not-the-key"),
    { retryOptions: { maxRetries: 0 } });
  try {
    await assert.rejects(bad.createSender("basic").sendMessages({ body: "x" }), (e) => {
      assert.equal(e.code, "UnauthorizedAccess");
      assert.match(e.message, /signature does not match the key 'RootManageSharedAccessKey'/);
      return true;
    });
  } finally {
    await bad.close();
  }
});

test("a SharedAccessSignature connection string (no SASL layer at all) works", async () => {
  const namespace = `sb://localhost:${emulator.port}/`;
  const { token } = await createSasTokenProvider({
    sharedAccessKeyName: "RootManageSharedAccessKey", sharedAccessKey: "SAS_KEY_VALUE",
  }).getToken(namespace);
  const sas = new ServiceBusClient(
    `Endpoint=${namespace};SharedAccessSignature=${token};UseDevelopmentEmulator=true`);
  try {
    await sas.createSender("basic").sendMessages({ body: "signed" });
    const receiver = sas.createReceiver("basic", { receiveMode: "receiveAndDelete" });
    const [m] = await receiveAll(receiver, 1);
    assert.equal(m.body, "signed");
  } finally {
    await sas.close();
  }
});

test("an unknown entity fails with not-found", async () => {
  await assert.rejects(client.createSender("no-such-queue").sendMessages({ body: "x" }), (e) => {
    assert.equal(e.code, "MessagingEntityNotFound");
    assert.match(e.message, /no-such-queue/);
    return true;
  });
});
