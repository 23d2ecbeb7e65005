// The official JS SDK against the metro emulator: N messages sent in batches, then received with
// peek-lock and completed. Prints messages/s for each phase and for the whole loop.
// Usage: node bench/js-emulator-throughput.js <port> [N]
"use strict";
const { ServiceBusClient } = require("@azure/service-bus");

const port = Number(process.argv[2]);
const total = Number(process.argv[3] || 20000);
const cs = `Endpoint=sb://localhost:${port};SharedAccessKeyName=RootManageSharedAccessKey;` +
  "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true";

(async () => {
  const client = new ServiceBusClient(cs);
  const sender = client.createSender("bench");
  const body = { subject: "MetroDemo/Type/GeekJokes", joke: "x".repeat(100) };
  const start = process.hrtime.bigint();
  let sent = 0;
  while (sent < total) {
    const batch = await sender.createMessageBatch();
    while (sent < total && batch.tryAddMessage({ body, subject: "MetroDemo/Type/GeekJokes" })) sent++;
    await sender.sendMessages(batch);
  }
  const sentAt = process.hrtime.bigint();
  const receiver = client.createReceiver("bench", { maxAutoLockRenewalDurationInMs: 0 });
  let done = 0;
  await new Promise((resolve, reject) => {
    receiver.subscribe(
      {
        processMessage: async (m) => {
          await receiver.completeMessage(m);
          if (++done === total) resolve();
        },
        processError: async (args) => reject(args.error),
      },
      { autoCompleteMessages: false, maxConcurrentCalls: 64 });
  });
  const end = process.hrtime.bigint();
  const seconds = (a, b) => Number(b - a) / 1e9;
  const rate = (n, s) => Math.round(n / s);
  console.log(JSON.stringify({
    messages: total,
    js_send_batched_per_s: rate(total, seconds(start, sentAt)),
    js_receive_complete_per_s: rate(total, seconds(sentAt, end)),
    js_send_receive_complete_per_s: rate(total, seconds(start, end)),
  }));
  await receiver.close();
  await client.close();
})().catch((e) => { console.error(e); process.exit(1); });
