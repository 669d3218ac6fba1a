"""t62 client matrix: a fifth stock client with its own protocol code (aiokafka), and the
codec matrix across every client: kcat (librdkafka 2.0), confluent-kafka (librdkafka 2.16),
kafka-python, kafkajs (with its snappy/lz4/zstd codec packages) and aiokafka.

Codec cells: every client's records, in every codec, are read back by confluent-kafka, and
confluent-kafka's records by every other client: byte-equal keys, values and headers, each
record exactly once, in order within its partition. One broker serves the whole module."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time

import pytest

import harness

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CLIENTS = ["kcat", "confluent", "kafka-python", "kafkajs", "aiokafka"]
# (producer, consumer): every producer read by confluent-kafka, confluent-kafka read by every consumer.
PAIRS = [(c, "confluent") for c in CLIENTS] + [("confluent", c) for c in CLIENTS if c != "confluent"]
PARTITIONS = 3
N = 200
NODE_TOOLS = harness.HERE / "tools"


# ---------------------------------------------------------------------------------------
# data: (partition or None, key, value, headers); the value starts with its index


def make_records(producer: str, codec: str) -> list[tuple]:
    rng = random.Random(f"{producer}/{codec}")
    out = []
    for i in range(N):
        size = rng.choice([0, 1, 10, 100, 1000, 5000])
        if producer == "kcat":
            # line-oriented input: no newline, no ':' (the key delimiter); all headers per run.
            alphabet = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D, ord(":")))
            body = bytes(rng.choices(alphabet, k=size)) if i % 2 else b"strata " * (size // 7)
            out.append((None, b"k%d" % (i % 37), b"%06d|" % i + body,
                        (("src", b"kcat"), ("dup", b"1"), ("dup", b"2"))))
            continue
        body = rng.randbytes(size) if i % 2 else b"strata " * (size // 7)
        key = None if i % 50 == 7 else b"" if i % 50 == 9 else rng.randbytes(8) + b"k%d" % i
        # Header values printable without ',' or '=' so kcat's %h output stays parseable.
        headers = (("trace", b"t-%d" % i), ("dup", b"1"), ("dup", b"2")) if i % 3 else ()
        out.append((i % PARTITIONS, key, b"%06d|" % i + body, headers))
    return out


def check(records: list[tuple], got: list[tuple], who: str):
    """`got`: (partition, offset, key, value, headers as ((str, bytes), ...))."""
    seen = {}
    by_part: dict[int, list] = {}
    for p, off, key, value, headers in got:
        assert value is not None and value[6:7] == b"|", f"{who}: foreign record at {p}/{off}: {value!r:.60}"
        i = int(value[:6])
        assert i not in seen, f"{who}: record {i} read twice ({seen[i]} and {(p, off)})"
        seen[i] = (p, off)
        want_p, want_k, want_v, want_h = records[i]
        if want_p is not None:
            assert p == want_p, f"{who}: record {i} in partition {p}, produced to {want_p}"
        assert key == want_k, f"{who}: record {i} key {key!r:.60} != {want_k!r:.60}"
        assert value == want_v, f"{who}: record {i} value differs ({len(value)} vs {len(want_v)} bytes)"
        assert tuple(headers) == want_h, f"{who}: record {i} headers {headers} != {want_h}"
        by_part.setdefault(p, []).append((off, i))
    missing = sorted(set(range(len(records))) - set(seen))
    assert not missing, f"{who}: {len(missing)} records missing, first {missing[:10]}"
    for p, lst in by_part.items():
        offs = sorted(lst)
        assert [o for o, _ in offs] == list(range(len(offs))), f"{who}: partition {p} offsets not dense"
        idx = [i for _, i in offs]
        assert idx == sorted(idx), f"{who}: partition {p} records out of order"


# ---------------------------------------------------------------------------------------
# producers


def produce_confluent(bs, topic, codec, records):
    from confluent_kafka import Producer

    p = Producer(harness.producer_conf(bs, **{"compression.type": codec}))
    errors = []
    for part, k, v, h in records:
        p.produce(topic, value=v, key=k, partition=part, headers=list(h) or None,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(60) == 0 and not errors, f"confluent-kafka delivery errors: {errors[:3]}"


def produce_kcat(bs, topic, codec, records):
    data = b"".join(k + b":" + v + b"\n" for _, k, v, _ in records)
    res = harness.kcat(["-P", "-b", bs, "-t", topic, "-z", codec, "-K", ":",
                        "-H", "src=kcat", "-H", "dup=1", "-H", "dup=2",
                        "-X", "acks=all", "-X", "linger.ms=20"], input=data, timeout=60)
    assert res.returncode == 0, f"kcat -P exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"


def produce_kafka_python(bs, topic, codec, records):
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=20,
                         compression_type=None if codec == "none" else codec)
    try:
        futs = [prod.send(topic, value=v, key=k, partition=p, headers=list(h)) for p, k, v, h in records]
        prod.flush(60)
        for f in futs:
            f.get(timeout=30)
    finally:
        prod.close(10)


def produce_kafkajs(bs, topic, codec, records):
    spec = [{"p": p, "k": None if k is None else k.hex(), "v": v.hex(), "h": [[n, x.hex()] for n, x in h]}
            for p, k, v, h in records]
    res = subprocess.run(["node", str(NODE_TOOLS / "kafkajs_codecs.js"), "produce", bs, topic, codec],
                         input=json.dumps(spec).encode(), capture_output=True, timeout=90, cwd=harness.HERE)
    assert res.returncode == 0, f"kafkajs produce exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"


async def _aio_produce(bs, topic, codec, records):
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=20,
                            compression_type=None if codec == "none" else codec)
    await prod.start()
    try:
        futs = [await prod.send(topic, value=v, key=k, partition=p, headers=list(h)) for p, k, v, h in records]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


def produce_aiokafka(bs, topic, codec, records):
    asyncio.run(_aio_produce(bs, topic, codec, records))


# ---------------------------------------------------------------------------------------
# consumers: each returns [(partition, offset, key, value, headers)]


def consume_confluent(bs, topic):
    parts = harness.consume(bs, topic, PARTITIONS, timeout=60)
    return [(r.partition, r.offset, r.key, r.value, r.headers) for recs in parts.values() for r in recs]


def consume_kcat(bs, topic):
    res = harness.kcat(["-C", "-b", bs, "-t", topic, "-o", "beginning", "-e", "-q",
                        "-X", "check.crcs=true", "-f", harness.KCAT_FORMAT], timeout=60)
    assert res.returncode == 0, f"kcat -C exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"
    parts = harness.parse_kcat(res.stdout)
    return [(r.partition, r.offset, r.key, r.value, tuple((n.decode(), v) for n, v in r.headers))
            for recs in parts.values() for r in recs]


def consume_kafka_python(bs, topic):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bs, group_id=None, enable_auto_commit=False, check_crcs=True)
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        c.seek_to_beginning()
        end = c.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"kafka-python: timed out, {len(out)} read"
            for tp, msgs in c.poll(timeout_ms=500).items():
                out += [(tp.partition, m.offset, m.key, m.value, tuple(m.headers)) for m in msgs]
    finally:
        c.close()
    return out


def consume_kafkajs(bs, topic):
    count = sum(harness.watermarks(bs, topic, PARTITIONS)[p][1] for p in range(PARTITIONS))
    res = subprocess.run(["node", str(NODE_TOOLS / "kafkajs_codecs.js"), "consume", bs, topic, str(count), "60000"],
                         capture_output=True, timeout=90, cwd=harness.HERE)
    assert res.returncode == 0, f"kafkajs consume exit {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}"
    recs = json.loads(res.stdout)["records"]
    unhex = lambda s: None if s is None else bytes.fromhex(s)  # noqa: E731
    return [(p, o, unhex(k), unhex(v), tuple((n, unhex(x)) for n, x in h)) for p, o, k, v, h in recs]


async def _aio_consume(bs, topic):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, check_crcs=True)
    await c.start()
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any([await c.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"aiokafka: timed out, {len(out)} read"
            for tp, msgs in (await c.getmany(timeout_ms=500)).items():
                out += [(tp.partition, m.offset, m.key, m.value, tuple(m.headers)) for m in msgs]
    finally:
        await c.stop()
    return out


def consume_aiokafka(bs, topic):
    return asyncio.run(_aio_consume(bs, topic))


PRODUCE = {"confluent": produce_confluent, "kcat": produce_kcat, "kafka-python": produce_kafka_python,
           "kafkajs": produce_kafkajs, "aiokafka": produce_aiokafka}
CONSUME = {"confluent": consume_confluent, "kcat": consume_kcat, "kafka-python": consume_kafka_python,
           "kafkajs": consume_kafkajs, "aiokafka": consume_aiokafka}
_produced: dict[tuple[str, str], tuple[str, list]] = {}


def produced_topic(b, producer: str, codec: str):
    """The topic `producer` wrote `codec` records to: produced once per module."""
    if (producer, codec) not in _produced:
        topic = f"m-{producer}-{codec}"
        harness.create_topic(b.bootstrap, topic, PARTITIONS)
        records = make_records(producer, codec)
        PRODUCE[producer](b.bootstrap, topic, codec, records)
        _produced[(producer, codec)] = (topic, records)
    return _produced[(producer, codec)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("producer,consumer", PAIRS, ids=[f"{p}->{c}" for p, c in PAIRS])
def test_codec_cell(mbroker, kcat_ok, producer, consumer, codec):
    topic, records = produced_topic(mbroker, producer, codec)
    got = CONSUME[consumer](mbroker.bootstrap, topic)
    check(records, got, f"{producer}->{consumer} ({codec})")


# ---------------------------------------------------------------------------------------
# aiokafka: the fifth client's features


async def _aio_consume_parts(bs, topic, partitions):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False)
    await c.start()
    out = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any([await c.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"aiokafka: timed out, {len(out)} read"
            for tp, msgs in (await c.getmany(timeout_ms=500)).items():
                out += [(tp.partition, m.offset, m.key, m.value) for m in msgs]
    finally:
        await c.stop()
    return out


@pytest.mark.timeout(120)
def test_aiokafka_idempotent_producer(mbroker):
    """enable_idempotence=True (acks=all, InitProducerId, sequence numbers): every record lands
    exactly once, dense, in send order per partition."""
    from aiokafka import AIOKafkaProducer

    topic = "aio-idem"
    harness.create_topic(mbroker.bootstrap, topic, 2)

    async def run():
        prod = AIOKafkaProducer(bootstrap_servers=mbroker.bootstrap, enable_idempotence=True, linger_ms=5,
                                max_batch_size=4096)
        await prod.start()
        try:
            futs = [await prod.send(topic, value=b"%05d" % i, key=b"k%d" % i, partition=i % 2) for i in range(2000)]
            metas = await asyncio.gather(*futs)
        finally:
            await prod.stop()
        return metas, await _aio_consume_parts(mbroker.bootstrap, topic, 2)

    metas, got = asyncio.run(run())
    assert sorted((m.partition, m.offset) for m in metas) == sorted((i % 2, i // 2) for i in range(2000))
    assert len(got) == 2000
    for p, off, key, value in got:
        i = int(value)
        assert (p, off, key) == (i % 2, i // 2, b"k%d" % i), f"record {i} at {p}/{off}"


@pytest.mark.timeout(120)
def test_aiokafka_group_two_members_commit(mbroker):
    """Two aiokafka members of one group split the partitions, read everything once, commit;
    a new member of the group resumes at the committed offsets."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic, group, parts, n = "aio-group", "aio-g1", 4, 400
    harness.create_topic(mbroker.bootstrap, topic, parts)
    bs = mbroker.bootstrap

    async def run():
        prod = AIOKafkaProducer(bootstrap_servers=bs, acks="all")
        await prod.start()
        for i in range(n):
            await prod.send(topic, value=b"%d" % i, partition=i % parts)
        await prod.stop()

        def member():
            return AIOKafkaConsumer(topic, bootstrap_servers=bs, group_id=group, enable_auto_commit=False,
                                    auto_offset_reset="earliest", session_timeout_ms=10000,
                                    heartbeat_interval_ms=500)

        c1, c2 = member(), member()
        await c1.start()
        await c2.start()
        seen: dict[int, int] = {}
        try:
            deadline = time.monotonic() + 60
            while True:
                a1, a2 = c1.assignment(), c2.assignment()
                if len(seen) == n and a1 and a2:
                    break
                assert time.monotonic() < deadline, f"group: {len(seen)} read, assignments {a1} / {a2}"
                for c in (c1, c2):
                    for tp, msgs in (await c.getmany(timeout_ms=200)).items():
                        for m in msgs:
                            i = int(m.value)
                            assert i not in seen or seen[i] == m.offset, f"record {i} read at two offsets"
                            seen[i] = m.offset
                    # Commit what this member read so far (a rebalance may move partitions).
                    if c.assignment():
                        await c.commit()
            a1, a2 = c1.assignment(), c2.assignment()
            assert not (a1 & a2), f"both members own {a1 & a2}"
            assert {tp.partition for tp in a1 | a2} == set(range(parts))
            await c1.commit()
            await c2.commit()
        finally:
            await c1.stop()
            await c2.stop()

        c3 = member()
        await c3.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(parts)]
            committed = {tp.partition: await c3.committed(tp) for tp in tps}
            assert committed == {p: n // parts for p in range(parts)}, f"committed {committed}"
            prod = AIOKafkaProducer(bootstrap_servers=bs, acks="all")
            await prod.start()
            await prod.send_and_wait(topic, value=b"after", partition=1)
            await prod.stop()
            got = []
            deadline = time.monotonic() + 60
            while not got:
                assert time.monotonic() < deadline, "the resumed member read nothing"
                for tp, msgs in (await c3.getmany(timeout_ms=500)).items():
                    got += [(tp.partition, m.offset, m.value) for m in msgs]
            assert got == [(1, n // parts, b"after")], f"resumed member read {got[:5]} (not from the commit)"
        finally:
            await c3.stop()

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_aiokafka_offsets_for_times(mbroker):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = "aio-times"
    harness.create_topic(mbroker.bootstrap, topic, 1)
    base = 1_700_000_000_000

    async def run():
        prod = AIOKafkaProducer(bootstrap_servers=mbroker.bootstrap, acks="all")
        await prod.start()
        for i in range(10):
            await prod.send_and_wait(topic, value=b"%d" % i, partition=0, timestamp_ms=base + i * 1000)
        await prod.stop()
        c = AIOKafkaConsumer(bootstrap_servers=mbroker.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            res = {}
            for ts in (base - 5, base, base + 3500, base + 9000, base + 9001):
                r = await c.offsets_for_times({tp: ts})
                res[ts] = None if r[tp] is None else (r[tp].offset, r[tp].timestamp)
            c.assign([tp])
            found = await c.offsets_for_times({tp: base + 6000})
            c.seek(tp, found[tp].offset)
            m = await c.getone()
            return res, m.value
        finally:
            await c.stop()

    res, value = asyncio.run(run())
    assert res == {base - 5: (0, base), base: (0, base), base + 3500: (4, base + 4000),
                   base + 9000: (9, base + 9000), base + 9001: None}
    assert value == b"6"


@pytest.mark.timeout(60)
def test_aiokafka_admin(mbroker):
    """aiokafka's admin client: create (and the error for a duplicate), add partitions (and the
    error for shrinking), describe configs, delete; checked through confluent-kafka's metadata."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import InvalidPartitionsError

    bs = mbroker.bootstrap

    async def run():
        adm = AIOKafkaAdminClient(bootstrap_servers=bs)
        await adm.start()
        try:
            r = await adm.create_topics([NewTopic("aio-admin", 2, 1, topic_configs={"retention.ms": "3600000"})])
            assert [(t[0], t[1]) for t in r.topic_errors] == [("aio-admin", 0)], r
            harness.wait_topic_metadata(bs, "aio-admin", 2)
            r = await adm.create_topics([NewTopic("aio-admin", 2, 1)])
            assert [(t[0], t[1]) for t in r.topic_errors] == [("aio-admin", 36)], r  # TOPIC_ALREADY_EXISTS
            r = await adm.create_partitions({"aio-admin": NewPartitions(5)})
            assert [(t[0], t[1]) for t in r.topic_errors] == [("aio-admin", 0)], r
            harness.wait_topic_metadata(bs, "aio-admin", 5)
            with pytest.raises(InvalidPartitionsError, match="aio-admin"):  # error 37: shrinking
                await adm.create_partitions({"aio-admin": NewPartitions(3)})
            [resp] = await adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "aio-admin")])
            [res] = resp.resources
            assert res[0] == 0, res
            configs = {c[0]: c[1] for c in res[4]}
            assert configs.get("retention.ms") == "3600000", configs
            r = await adm.delete_topics(["aio-admin"])
            assert [(t[0], t[1]) for t in r.topic_error_codes] == [("aio-admin", 0)], r
        finally:
            await adm.close()

    asyncio.run(run())
    adm = harness.admin_client(bs)
    harness.eventually(lambda: "aio-admin" not in adm.list_topics(timeout=5).topics, 20, what="topic deleted")


def test_kafkajs_codec_tool_rejects_an_unknown_codec(mbroker):
    res = subprocess.run(["node", str(NODE_TOOLS / "kafkajs_codecs.js"), "produce", mbroker.bootstrap, "m-x", "brotli"],
                         input=b"[]", capture_output=True, timeout=60, cwd=harness.HERE)
    assert res.returncode == 1 and b"unknown codec brotli" in res.stderr, res


# ---------------------------------------------------------------------------------------
# SASL/SCRAM over TLS for the clients t28 does not cover: aiokafka and kafkajs


@pytest.fixture
def secure(broker_factory, tmp_path, strata_bin):
    from certs import make_certs
    from t28_kafka_security_test import ADMIN_PW, ALICE_PW, _cli

    ca, cert, key = make_certs(tmp_path / "tls")
    b = broker_factory(config={"kafka": {"tls_cert_file": str(cert), "tls_key_file": str(key),
                                         "sasl_mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256"}})
    r = _cli(strata_bin, ["user", "add", "admin", "--password-stdin", "--via-admin", b.admin_url],
             stdin=ADMIN_PW + "\n")
    assert r.returncode == 0, r.stderr
    r = _cli(strata_bin, ["user", "add", "alice", "--mechanism", "SCRAM-SHA-256", "--password-stdin",
                          "--via-admin", b.admin_url], stdin=ALICE_PW + "\n")
    assert r.returncode == 0, r.stderr
    return b, ca, {"SCRAM-SHA-512": ("admin", ADMIN_PW), "SCRAM-SHA-256": ("alice", ALICE_PW)}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_aiokafka_sasl_scram_over_tls(secure, caplog, mech):
    """aiokafka over SASL_SSL: a SCRAM user creates a topic, produces and consumes; a wrong
    password is refused with an authentication error."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError
    from aiokafka.helpers import create_ssl_context

    b, ca, users = secure
    user, pw = users[mech]

    def conf(password):
        return dict(bootstrap_servers=b.bootstrap, security_protocol="SASL_SSL",
                    ssl_context=create_ssl_context(cafile=str(ca)), sasl_mechanism=mech,
                    sasl_plain_username=user, sasl_plain_password=password)

    async def run():
        adm = AIOKafkaAdminClient(**conf(pw))
        await adm.start()
        try:
            await adm.create_topics([NewTopic("sec", 1, 1)])
        finally:
            await adm.close()
        prod = AIOKafkaProducer(acks="all", **conf(pw))
        await prod.start()
        try:
            await prod.send_and_wait("sec", b"from-aiokafka", partition=0)
        finally:
            await prod.stop()
        c = AIOKafkaConsumer(enable_auto_commit=False, **conf(pw))
        await c.start()
        try:
            tp = TopicPartition("sec", 0)
            c.assign([tp])
            await c.seek_to_beginning(tp)
            m = await asyncio.wait_for(c.getone(), 30)
        finally:
            await c.stop()
        bad = AIOKafkaProducer(request_timeout_ms=10000, **conf(pw + "-wrong"))
        with pytest.raises(KafkaError, match="Unable to bootstrap"):
            await bad.start()
        await bad.stop()
        return m.value

    assert asyncio.run(run()) == b"from-aiokafka"
    # aiokafka reports the broker's SASL_AUTHENTICATION_FAILED (58) in its log, then gives up.
    assert "[Error 58] SaslAuthenticationFailed" in caplog.text, caplog.text[-2000:]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafkajs_sasl_scram_over_tls(secure, mech):
    """kafkajs over SASL_SSL produces (zstd) and consumes with a group; a wrong password is
    refused with kafkajs's SASL authentication error."""
    from confluent_kafka.admin import AdminClient, NewTopic
    from t28_kafka_security_test import ADMIN_PW, _sasl

    b, ca, users = secure
    user, pw = users[mech]
    tool = ["node", str(NODE_TOOLS / "kafkajs_codecs.js")]

    def env(password):
        sasl = {"mechanism": mech.lower(), "username": user, "password": password}
        return harness.clean_env({"KAFKAJS_SASL": json.dumps(sasl), "KAFKAJS_CA": str(ca)})

    adm = AdminClient({"bootstrap.servers": b.bootstrap, **_sasl(ca, "SCRAM-SHA-512", "admin", ADMIN_PW)})
    adm.create_topics([NewTopic("sec-js", 2, 1)])["sec-js"].result(30)  # `adm` outlives the future
    records = [{"p": i % 2, "k": b"k%d" % i, "v": b"%06d|js" % i, "h": [["m", mech.encode()]]} for i in range(20)]
    spec = [{"p": r["p"], "k": r["k"].hex(), "v": r["v"].hex(), "h": [[n, v.hex()] for n, v in r["h"]]}
            for r in records]
    res = subprocess.run(tool + ["produce", b.bootstrap, "sec-js", "zstd"], input=json.dumps(spec).encode(),
                         capture_output=True, timeout=60, cwd=harness.HERE, env=env(pw))
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    res = subprocess.run(tool + ["consume", b.bootstrap, "sec-js", "20", "30000"],
                         capture_output=True, timeout=60, cwd=harness.HERE, env=env(pw))
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    got = sorted((p, bytes.fromhex(k), bytes.fromhex(v)) for p, _, k, v, _ in json.loads(res.stdout)["records"])
    assert got == sorted((r["p"], r["k"], r["v"]) for r in records)

    res = subprocess.run(tool + ["produce", b.bootstrap, "sec-js", "none"], input=b"[]",
                         capture_output=True, timeout=60, cwd=harness.HERE, env=env(pw + "-wrong"))
    assert res.returncode == 1 and b"KafkaJSSASLAuthenticationError" in res.stderr, res.stderr[-2000:]


@pytest.mark.timeout(90)
def test_kafkajs_idempotent_producer(mbroker):
    """kafkajs with `idempotent: true` (InitProducerId, sequences over several sends): every
    record exactly once, dense, in order."""
    topic = "kafkajs-idem"
    harness.create_topic(mbroker.bootstrap, topic, 2)
    spec = [{"p": i % 2, "k": None, "v": (b"%06d|idem" % i).hex(), "h": []} for i in range(1000)]
    res = subprocess.run(["node", str(NODE_TOOLS / "kafkajs_codecs.js"), "produce", mbroker.bootstrap, topic, "lz4"],
                         input=json.dumps(spec).encode(), capture_output=True, timeout=60, cwd=harness.HERE,
                         env=harness.clean_env({"KAFKAJS_IDEMPOTENT": "1"}))
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    got = harness.consume(mbroker.bootstrap, topic, 2, timeout=60)
    assert sorted((r.partition, r.offset, r.value) for recs in got.values() for r in recs) == \
        sorted((i % 2, i // 2, b"%06d|idem" % i) for i in range(1000))
