// kafkajs cells of the client matrix that need a long-running client (t71): a group member
// that reports its assignments, an idempotent producer that reports every acknowledged or
// failed send, and the topic admin calls. Every mode prints JSON lines on stdout, each written
// to the pipe before the client goes on (a member killed with SIGKILL has reported every
// record it committed).
//
//   node kafkajs_matrix.js member BOOTSTRAP GROUP TOPIC [--commit auto|each] [--max-records N]
//                                 [--max-bytes B]
//       joins GROUP on TOPIC from the beginning; prints {"event":"join","member","leader","partitions"}
//       on every join (kafkajs's GROUP_JOIN), {"event":"record","p","o","v"} for each record read
//       and, with --commit each, {"event":"commit","p","o"} once offset o+1 is committed. Leaves the
//       group and exits when stdin closes, or after N records (reporting and committing nothing
//       past them). --max-bytes: kafkajs's maxBytesPerPartition, so that one fetch holds only a few
//       batches of each partition.
//   node kafkajs_matrix.js produce-idem BOOTSTRAP TOPIC N BATCH PARTITIONS [PAUSE_MS]
//       `idempotent: true`, one request in flight: sends records k000000.. in sends of BATCH records,
//       send j to partition j % PARTITIONS, PAUSE_MS apart (so a test can kill the broker midway);
//       prints {"event":"ack","first","n","p","base"} or, once kafkajs gives up,
//       {"event":"failed","first","n","p","error","message"} per send, and kafkajs's warnings and
//       errors (a lost connection, a retry) as {"event":"log","level","message","retryCount"}.
//   node kafkajs_matrix.js admin BOOTSTRAP TOPIC PARTITIONS
//       creates, lists, re-creates (the errors), deletes; prints one JSON line with each outcome.
'use strict';
const { Kafka, logLevel } = require('kafkajs');

const SESSION_MS = 6000;

function emit(obj) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(obj) + '\n', resolve));
}

// kafkajs's own errors and warnings (its retries among them) as {"event":"log"} lines.
const logCreator = () => ({ level, log }) => {
  if (level <= logLevel.WARN) {
    emit({ event: 'log', level: level === logLevel.ERROR ? 'error' : 'warn', message: log.message,
           retryCount: log.retryCount });
  }
};

function client(bootstrap, retry, logs = false) {
  return new Kafka({
    clientId: 'strata-e2e-kafkajs-matrix',
    brokers: [bootstrap],
    logLevel: logs ? logLevel.WARN : logLevel.NOTHING,
    logCreator,
    retry: retry || { retries: 10 },
  });
}

// The Kafka error name kafkajs reports (e.g. TOPIC_ALREADY_EXISTS), looking through the
// aggregate and retry wrappers it throws.
function errorType(err) {
  if (!err) return null;
  if (err.type) return err.type;
  if (Array.isArray(err.errors)) {
    for (const e of err.errors) {
      const t = errorType(e);
      if (t) return t;
    }
  }
  if (err.originalError) return errorType(err.originalError);
  if (err.cause) return errorType(err.cause);
  return err.name || String(err);
}

function options(args) {
  const out = {};
  for (let i = 0; i < args.length; i += 2) {
    if (!args[i].startsWith('--')) throw new Error(`unexpected argument ${args[i]}`);
    out[args[i].slice(2)] = args[i + 1];
  }
  return out;
}

async function member(bootstrap, groupId, topic, ...rest) {
  const opts = options(rest);
  const commit = opts.commit || 'auto';
  if (!['auto', 'each'].includes(commit)) throw new Error(`--commit auto|each, not ${commit}`);
  const max = opts['max-records'] === undefined ? Infinity : Number(opts['max-records']);
  const consumer = client(bootstrap).consumer({
    groupId,
    sessionTimeout: SESSION_MS,
    heartbeatInterval: 500,
    // An idle fetch waits this long (kafkajs: 5 s); it delays noticing a rebalance and leaving.
    maxWaitTimeInMs: 500,
    ...(opts['max-bytes'] === undefined ? {} : { maxBytesPerPartition: Number(opts['max-bytes']) }),
  });
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    emit({ event: 'join', member: payload.memberId, leader: payload.isLeader,
           partitions: (payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b) });
  });
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    emit({ event: 'crash', error: errorType(payload.error), restart: payload.restart });
  });
  let read = 0;
  let stop;
  const stopped = new Promise((resolve) => { stop = resolve; });
  process.stdin.on('end', stop);
  process.stdin.resume();
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: commit === 'auto',
    eachMessage: async ({ partition, message }) => {
      if (read >= max) return; // after the last one: neither reported nor committed
      read += 1;
      const o = Number(message.offset);
      await emit({ event: 'record', p: partition, o, v: message.value.toString() });
      if (commit === 'each') {
        await consumer.commitOffsets([{ topic, partition, offset: String(o + 1) }]);
        await emit({ event: 'commit', p: partition, o });
      }
      if (read >= max) stop();
    },
  });
  await stopped;
  await consumer.disconnect();
  await emit({ event: 'left', read });
}

async function produceIdem(bootstrap, topic, nArg, batchArg, partitionsArg, pauseArg) {
  const [n, batch, partitions] = [Number(nArg), Number(batchArg), Number(partitionsArg)];
  const pauseMs = Number(pauseArg || 0);
  // Retries bounded (kafkajs warns that this may break exactly-once: a send it gives up on is
  // reported as failed) but long enough to outlast a broker restart: 10, at most 2 s apart.
  const retry = { retries: 10, initialRetryTime: 100, maxRetryTime: 2000 };
  const producer = client(bootstrap, retry, true)
    .producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false, retry });
  await producer.connect();
  for (let first = 0, j = 0; first < n; first += batch, j += 1) {
    const p = j % partitions;
    const count = Math.min(batch, n - first);
    const messages = [];
    for (let i = first; i < first + count; i += 1) {
      const id = String(i).padStart(6, '0');
      messages.push({ partition: p, key: `k${id}`, value: `v${id}` });
    }
    try {
      const res = await producer.send({ topic, acks: -1, messages });
      await emit({ event: 'ack', first, n: count, p, base: Number(res[0].baseOffset) });
    } catch (err) {
      await emit({ event: 'failed', first, n: count, p, error: errorType(err),
                   message: String(err && err.message) });
    }
    if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
  }
  await producer.disconnect();
  await emit({ event: 'done' });
}

async function attempt(fn) {
  try {
    const value = await fn();
    return { ok: value === undefined ? true : value };
  } catch (err) {
    const errors = Array.isArray(err.errors)
      ? err.errors.map((e) => ({ topic: e.topic, type: errorType(e) })) : undefined;
    return { error: errorType(err), name: err.name, errors, message: String(err && err.message) };
  }
}

async function admin(bootstrap, topic, partitionsArg) {
  const numPartitions = Number(partitionsArg);
  const adm = client(bootstrap, { retries: 2, initialRetryTime: 100 }).admin();
  await adm.connect();
  const out = {};
  out.create = await attempt(() => adm.createTopics({ topics: [{ topic, numPartitions }] }));
  out.listed = (await adm.listTopics()).includes(topic);
  const md = await adm.fetchTopicMetadata({ topics: [topic] });
  out.partitions = md.topics[0].partitions.map((p) => p.partitionId).sort((a, b) => a - b);
  // kafkajs maps a CreateTopics whose every error is TOPIC_ALREADY_EXISTS to `false`; alongside
  // a topic that fails otherwise it throws the per-topic errors.
  out.createAgain = await attempt(() => adm.createTopics({ topics: [{ topic, numPartitions }] }));
  out.createAgainWithBad = await attempt(() => adm.createTopics({
    topics: [{ topic, numPartitions }, { topic: `${topic}-bad`, numPartitions: 0 }],
  }));
  out.badCreated = (await adm.listTopics()).includes(`${topic}-bad`);
  out.delete = await attempt(() => adm.deleteTopics({ topics: [topic] }));
  // Deletion is a metadata change: poll kafkajs's own listTopics until the topic is gone.
  for (let i = 0; i < 50; i += 1) {
    out.listedAfterDelete = (await adm.listTopics()).includes(topic);
    if (!out.listedAfterDelete) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  out.deleteAgain = await attempt(() => adm.deleteTopics({ topics: [topic] }));
  await adm.disconnect();
  await emit(out);
}

async function main() {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'member') await member(...args);
  else if (mode === 'produce-idem') await produceIdem(...args);
  else if (mode === 'admin') await admin(...args);
  else throw new Error(`usage: kafkajs_matrix.js member|produce-idem|admin ... (got ${mode})`);
}

main().then(() => process.exit(0)).catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
