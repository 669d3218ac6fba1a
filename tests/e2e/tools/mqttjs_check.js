// mqtt.js against the broker: QoS 1 publish/subscribe, a retained message, MQTT 5 user
// properties and Response Topic / Correlation Data, over the URL given (mqtt://, mqtts:// or
// ws://). Prints one JSON line with what was received; exits non-zero on a failure or timeout.
//
// usage: node mqttjs_check.js <url> <protocolVersion 4|5> <topic prefix> [CA certificate file]
// With a CA file, a TLS broker's certificate is verified against it (never skipped).
const fs = require("fs");
const mqtt = require("mqtt");

const [url, versionArg, prefix, caFile] = process.argv.slice(2);
const tls = caFile ? { ca: fs.readFileSync(caFile), rejectUnauthorized: true } : {};
const protocolVersion = Number(versionArg);
const timer = setTimeout(() => {
  console.error("timed out");
  process.exit(2);
}, 30000);

function connect(clientId) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { clientId, protocolVersion, reconnectPeriod: 0, connectTimeout: 10000, ...tls });
    c.once("connect", () => resolve(c));
    c.once("error", reject);
  });
}

(async () => {
  const pub = await connect(`js-pub-${process.pid}`);
  // The retained message first: a later subscriber gets it with RETAIN set.
  await pub.publishAsync(`${prefix}/retained`, "kept", { qos: 1, retain: true });
  const sub = await connect(`js-sub-${process.pid}`);
  const got = [];
  const want = 11;
  const done = new Promise((resolve) => {
    sub.on("message", (topic, payload, packet) => {
      const p = packet.properties || {};
      got.push({
        topic,
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
        user: p.userProperties || null,
        response_topic: p.responseTopic || null,
        correlation: p.correlationData ? Buffer.from(p.correlationData).toString("hex") : null,
      });
      if (got.length >= want) resolve();
    });
  });
  await sub.subscribeAsync(`${prefix}/#`, { qos: 1 });
  const props = protocolVersion === 5
    ? { properties: { userProperties: { unit: "C" }, responseTopic: `${prefix}/reply`, correlationData: Buffer.from([1, 2, 3]) } }
    : {};
  for (let i = 0; i < 10; i++) {
    await pub.publishAsync(`${prefix}/data`, `m${i}`, { qos: 1, ...props });
  }
  await done;
  console.log(JSON.stringify(got));
  await pub.endAsync();
  await sub.endAsync();
  clearTimeout(timer);
})().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
