// kafkajs admin against a broker: grows a topic, alters and describes its configs, produces to
// the new partition, deletes records, looks offsets up by time, describes the cluster, and
// provokes the errors (shrinking, an unknown config, an unknown topic). Prints one JSON line
// with every outcome; the Python test asserts on it.
// Usage: node kafkajs_admin.js BOOTSTRAP TOPIC
'use strict';
const { Kafka, logLevel, ConfigResourceTypes } = require('kafkajs');

// The error type kafkajs reports for a failed admin call (a Kafka error name, e.g.
// INVALID_PARTITIONS), looking inside the aggregate errors some calls throw.
function errorType(err) {
  if (!err) return null;
  if (err.type) return err.type;
  for (const key of ['errors', 'partitions', 'topicErrors']) {
    const list = err[key];
    if (Array.isArray(list)) {
      for (const e of list) {
        const t = errorType(e.error || e);
        if (t) return t;
      }
    }
  }
  if (err.cause) return errorType(err.cause);
  return err.name || String(err);
}

async function attempt(fn) {
  try {
    const value = await fn();
    return { ok: value === undefined ? true : value };
  } catch (err) {
    return { error: errorType(err), message: String(err && err.message) };
  }
}

async function main() {
  const [bootstrap, topic] = process.argv.slice(2);
  const kafka = new Kafka({
    clientId: 'strata-e2e-kafkajs-admin',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 2, initialRetryTime: 100 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const out = {};

  out.grow = await attempt(() =>
    admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] }));
  out.shrink = await attempt(() =>
    admin.createPartitions({ topicPartitions: [{ topic, count: 2 }] }));
  out.growUnknown = await attempt(() =>
    admin.createPartitions({ topicPartitions: [{ topic: 'kafkajs-no-such-topic', count: 2 }] }));
  await admin.fetchTopicMetadata({ topics: [topic] });
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  out.partitions = md.topics[0].partitions.length;

  out.alter = await attempt(() => admin.alterConfigs({
    validateOnly: false,
    resources: [{
      type: ConfigResourceTypes.TOPIC,
      name: topic,
      configEntries: [{ name: 'retention.ms', value: '123456789' }],
    }],
  }));
  out.alterUnknown = await attempt(() => admin.alterConfigs({
    validateOnly: false,
    resources: [{
      type: ConfigResourceTypes.TOPIC,
      name: topic,
      configEntries: [{ name: 'no.such.config', value: '1' }],
    }],
  }));
  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }],
  });
  out.configs = {};
  for (const e of described.resources[0].configEntries) {
    out.configs[e.configName] = { value: e.configValue, readOnly: e.readOnly };
  }
  out.describeUnknown = await attempt(() => admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: 'kafkajs-no-such-topic' }],
  }));

  // Five records on the new partition 2, with known timestamps.
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  const base = 1_700_000_000_000;
  await producer.send({
    topic,
    acks: -1,
    messages: [0, 1, 2, 3, 4].map((i) => ({
      partition: 2,
      value: `kjs-${i}`,
      timestamp: String(base + i * 1000),
    })),
  });
  await producer.disconnect();

  out.byTimestamp = await admin.fetchTopicOffsetsByTimestamp(topic, base + 2500);
  out.deleteRecords = await attempt(() =>
    admin.deleteTopicRecords({ topic, partitions: [{ partition: 2, offset: '3' }] }));
  out.offsets = await admin.fetchTopicOffsets(topic);
  out.cluster = await admin.describeCluster();
  await admin.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
