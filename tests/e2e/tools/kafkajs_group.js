// A kafkajs consumer in a group: reads `count` records of `topic` from the start (or from the
// group's committed offsets), commits them, leaves, and prints one JSON line with what it read.
// Usage: node kafkajs_group.js BOOTSTRAP GROUP TOPIC COUNT TIMEOUT_MS
'use strict';
const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const [bootstrap, groupId, topic, countArg, timeoutArg] = process.argv.slice(2);
  const count = Number(countArg);
  const timeoutMs = Number(timeoutArg || '60000');
  const kafka = new Kafka({
    clientId: 'strata-e2e-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 10 },
  });
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 });
  const records = [];
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      records.push([partition, Number(message.offset), message.value.toString()]);
      await consumer.commitOffsets([
        { topic, partition, offset: (BigInt(message.offset) + 1n).toString() },
      ]);
      if (records.length >= count) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  console.log(JSON.stringify({ records }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
