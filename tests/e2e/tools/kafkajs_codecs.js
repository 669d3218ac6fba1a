// kafkajs with every codec registered (gzip is built in; snappy: kafkajs-snappy, lz4:
// @2l/kafkajs-lz4, zstd: a codec over @bokuweb/zstd-wasm), for the client matrix (t62).
//
//   node kafkajs_codecs.js produce BOOTSTRAP TOPIC CODEC < records.json
//       records: [{p, k, v, h: [[name, hex]...]}] with k/v hex strings or null; prints {"offsets": [...]}
//   node kafkajs_codecs.js consume BOOTSTRAP TOPIC COUNT TIMEOUT_MS
//       reads COUNT records from the beginning (a fresh group), prints {"records": [[p, offset, k, v, h]...]}
// SASL_SSL when KAFKAJS_SASL is set: JSON {"mechanism": "scram-sha-256", "username", "password"},
// with KAFKAJS_CA the PEM file of the CA that signed the broker's certificate.
'use strict';
const fs = require('fs');
const { Kafka, logLevel, CompressionTypes, CompressionCodecs } = require('kafkajs');
const SnappyCodec = require('kafkajs-snappy');
const LZ4Codec = require('@2l/kafkajs-lz4').default || require('@2l/kafkajs-lz4');
const zstd = require('@bokuweb/zstd-wasm');

const ZstdCodec = () => ({
  async compress(encoder) {
    return Buffer.from(zstd.compress(encoder.buffer, 3));
  },
  async decompress(buffer) {
    // Producers stream-compress, so the frame may not carry its size: give a generous bound.
    return Buffer.from(zstd.decompress(buffer, { defaultHeapSize: 64 * 1024 * 1024 }));
  },
});

CompressionCodecs[CompressionTypes.Snappy] = SnappyCodec;
CompressionCodecs[CompressionTypes.LZ4] = new LZ4Codec().codec;
CompressionCodecs[CompressionTypes.ZSTD] = ZstdCodec;

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
};

const hex = (b) => (b === null || b === undefined ? null : Buffer.from(b).toString('hex'));
const unhex = (s) => (s === null ? null : Buffer.from(s, 'hex'));

function client(bootstrap) {
  const security = {};
  if (process.env.KAFKAJS_SASL) {
    security.sasl = JSON.parse(process.env.KAFKAJS_SASL);
    security.ssl = { ca: [fs.readFileSync(process.env.KAFKAJS_CA, 'utf8')] };
  }
  return new Kafka({
    clientId: 'strata-e2e-kafkajs-codecs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 10 },
    ...security,
  });
}

// Resolve once the whole line is handed to the pipe: process.exit() would cut a large write short.
function emit(obj) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve));
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function produce(bootstrap, topic, codec) {
  if (!(codec in CODECS)) throw new Error(`unknown codec ${codec}`);
  const records = await readStdin();
  // KAFKAJS_IDEMPOTENT=1: InitProducerId and sequence numbers (kafkajs wants one request in flight).
  const idempotent = process.env.KAFKAJS_IDEMPOTENT === '1';
  const producer = client(bootstrap).producer({
    allowAutoTopicCreation: false,
    idempotent,
    maxInFlightRequests: idempotent ? 1 : undefined,
  });
  await producer.connect();
  const messages = records.map((r) => {
    const headers = {};
    for (const [name, value] of r.h) {
      const v = unhex(value);
      if (name in headers) headers[name] = [].concat(headers[name], v);
      else headers[name] = v;
    }
    return { partition: r.p, key: unhex(r.k), value: unhex(r.v), headers };
  });
  // Several sends when idempotent, so the sequence numbers advance across batches.
  const chunk = idempotent ? 100 : messages.length;
  const res = [];
  for (let i = 0; i < messages.length || i === 0; i += chunk) {
    const part = messages.slice(i, i + chunk);
    res.push(...(await producer.send({ topic, acks: -1, compression: CODECS[codec], messages: part })));
    if (messages.length === 0) break;
  }
  await producer.disconnect();
  await emit({ offsets: res });
}

async function consume(bootstrap, topic, countArg, timeoutArg) {
  const count = Number(countArg);
  const groupId = `kafkajs-codecs-${topic}-${process.pid}-${Date.now()}`;
  const consumer = client(bootstrap).consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 1000 });
  const records = [];
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      const h = [];
      for (const [name, value] of Object.entries(message.headers || {})) {
        for (const v of [].concat(value)) h.push([name, hex(v)]);
      }
      records.push([partition, Number(message.offset), hex(message.key), hex(message.value), h]);
      if (records.length >= count) done();
    },
  });
  const timer = setTimeout(done, Number(timeoutArg || '60000'));
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  await emit({ records });
}

async function main() {
  await zstd.init();
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'produce') await produce(...args);
  else if (mode === 'consume') await consume(...args);
  else throw new Error(`usage: kafkajs_codecs.js produce|consume ... (got ${mode})`);
}

main().then(() => process.exit(0)).catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
