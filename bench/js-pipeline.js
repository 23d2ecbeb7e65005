// The original's pipeline written with the official JS SDK, tuned fairly, as a peer for metro's
// figures: receive with peek-lock, defer, fetch the deferred messages by sequence number in
// batches, complete them. Same concurrency as metro's workers.
// Usage: node bench/js-pipeline.js <port> [N] [concurrency]
// Prints {"js_pipeline_per_s":…, "js_peak_rss_kib":…, "js_cpu_us_per_message":…}.
"use strict";
const { ServiceBusClient } = require("@azure/service-bus");

const port = Number(process.argv[2]);
const total = Number(process.argv[3] || 20000);
const concurrency = Number(process.argv[4] || 8);
const topic = "bench-t1";
const subscription = "metro";
const kFetchBatch = 64;
const cs = `Endpoint=sb://localhost:${port};SharedAccessKeyName=RootManageSharedAccessKey;` +
  "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true";

(async () => {
  const client = new ServiceBusClient(cs);
  const sender = client.createSender(topic);
  const body = { subject: "MetroDemo/Type/GeekJokes", joke: "x".repeat(100) };
  let sent = 0;
  while (sent < total) {
    const batch = await sender.createMessageBatch();
    while (sent < total && batch.tryAddMessage({ body, subject: "MetroDemo/Type/GeekJokes" })) sent++;
    await sender.sendMessages(batch);
  }
  await sender.close();

  const cpuBefore = process.cpuUsage();
  const start = process.hrtime.bigint();
  const receiver = client.createReceiver(topic, subscription, { maxAutoLockRenewalDurationInMs: 0 });
  let pending = [];
  let completed = 0;
  let fetching = 0;
  let finish;
  let fail;
  const done = new Promise((resolve, reject) => { finish = resolve; fail = reject; });

  // Fetches up to kFetchBatch deferred messages by sequence number and completes each.
  const fetchAndComplete = async () => {
    if (pending.length === 0 || fetching >= concurrency) return;
    const sequences = pending.splice(0, kFetchBatch);
    fetching++;
    try {
      const messages = await receiver.receiveDeferredMessages(sequences);
      await Promise.all(messages.map((m) => receiver.completeMessage(m)));
      completed += messages.length;
      if (completed >= total) finish();
    } catch (e) {
      fail(e);
    } finally {
      fetching--;
    }
    return fetchAndComplete();
  };

  receiver.subscribe(
    {
      processMessage: async (m) => {
        await receiver.deferMessage(m);
        pending.push(m.sequenceNumber);
        fetchAndComplete();
      },
      processError: async (args) => fail(args.error),
    },
    { autoCompleteMessages: false, maxConcurrentCalls: concurrency });
  // A last partial batch: fetched once nothing new arrives.
  const tick = setInterval(fetchAndComplete, 5);
  await done;
  clearInterval(tick);
  const end = process.hrtime.bigint();
  const cpu = process.cpuUsage(cpuBefore);
  console.log(JSON.stringify({
    messages: total,
    concurrency,
    js_pipeline_per_s: Math.round(total / (Number(end - start) / 1e9)),
    js_cpu_us_per_message: Math.round((cpu.user + cpu.system) / total),
    js_peak_rss_kib: process.resourceUsage().maxRSS,
  }));
  await receiver.close();
  await client.close();
})().catch((e) => { console.error(e); process.exit(1); });
