// A scriptable Service Bus peer for C++ integration tests: the official JS SDK driven by one
// JSON command a line on stdin, answering one JSON line each on stdout.
// Usage: node peer.js <connection string>
"use strict";
const readline = require("node:readline");
const { ServiceBusClient } = require("@azure/service-bus");
const Long = require("long");

const client = new ServiceBusClient(process.argv[2], {
  retryOptions: { maxRetries: 10, retryDelayInMs: 100, timeoutInMs: 3000 },
});
const held = new Map();          // sequence number -> [receiver, message]
const receivers = new Map();     // entity -> receiver
const subscribed = [];           // bodies delivered to subscribe()

function receiverFor(entity) {
  if (!receivers.has(entity)) {
    receivers.set(entity, client.createReceiver(entity, { maxAutoLockRenewalDurationInMs: 0 }));
  }
  return receivers.get(entity);
}

function describe(m) {
  return {
    body: m.body, sequence: m.sequenceNumber.toNumber(), deliveryCount: m.deliveryCount,
    subject: m.subject, messageId: m.messageId, correlationId: m.correlationId,
    contentType: m.contentType, applicationProperties: m.applicationProperties || {},
    state: m.state,
  };
}

const ops = {
  async send({ entity, bodies }) {
    await client.createSender(entity).sendMessages(bodies.map((body) => ({ body })));
    return {};
  },
  async receive({ entity, count = 1, timeout = 3000 }) {
    const receiver = receiverFor(entity);
    const got = await receiver.receiveMessages(count, { maxWaitTimeInMs: timeout });
    for (const m of got) held.set(m.sequenceNumber.toNumber(), [receiver, m]);
    return { messages: got.map(describe) };
  },
  async "send-full"({ entity, message }) {
    await client.createSender(entity).sendMessages(message);
    return {};
  },
  async "receive-deferred"({ entity, sequences }) {
    const receiver = receiverFor(entity);
    const got = await receiver.receiveDeferredMessages(sequences.map((n) => Long.fromNumber(n)));
    for (const m of got) held.set(m.sequenceNumber.toNumber(), [receiver, m]);
    return { messages: got.map(describe) };
  },
  async settle({ sequence, how }) {
    const [receiver, message] = held.get(sequence);
    held.delete(sequence);
    const method = { complete: "completeMessage", abandon: "abandonMessage",
                     defer: "deferMessage" }[how];
    await receiver[method](message);
    return {};
  },
  async subscribe({ entity }) {
    const receiver = client.createReceiver(entity);
    receiver.subscribe({
      processMessage: async (m) => { subscribed.push(m.body); },
      processError: async () => {},
    });
    return {};
  },
  async subscribed() {
    return { bodies: subscribed };
  },
};

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  try {
    const result = await ops[command.op](command);
    process.stdout.write(JSON.stringify({ ok: true, ...result }) + "\n");
  } catch (e) {
    process.stdout.write(JSON.stringify({ ok: false, code: e.code || e.name, message: e.message }) + "\n");
  }
});
lines.on("close", async () => {
  await client.close();
  process.exit(0);
});
