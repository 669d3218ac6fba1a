"""Hand-encoded Kafka frames for the raw protocol pokes (non-flexible versions, request
header v1: api_key, api_version, correlation_id, client_id; plus InitProducerId v3, the
one flexible request the idempotence tests need)."""

from __future__ import annotations

import socket
import struct
import time

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20
API_INIT_PRODUCER_ID = 22

UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
INVALID_RECORD = 87


def string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
            client_id: str | None = "strata-e2e") -> bytes:
    payload = struct.pack(">hhi", api_key, api_version, correlation_id) + string(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def connect(port: int, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(s: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", recv_exact(s, 4))
    assert 0 <= size <= 64 << 20, f"implausible response size {size}"
    return recv_exact(s, size)


def roundtrip(port: int, frame: bytes, timeout: float = 10) -> bytes:
    with connect(port, timeout) as s:
        s.sendall(frame)
        return recv_frame(s)


def wait_closed(s: socket.socket, timeout: float = 10) -> tuple[bool, bytes]:
    """Read until the peer closes. Returns (closed_within_timeout, bytes_received)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, bytes(got)
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return False, bytes(got)
        except (ConnectionResetError, BrokenPipeError):
            return True, bytes(got)
        if not chunk:
            return True, bytes(got)
        got += chunk


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"response too short: need {size} bytes at {self.pos}, have {len(self.data)}")
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return v if len(v) > 1 else v[0]

    def i8(self):
        return self.take(">b")

    def i16(self):
        return self.take(">h")

    def i32(self):
        return self.take(">i")

    def i64(self):
        return self.take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode()

    def remaining(self) -> int:
        return len(self.data) - self.pos


def api_versions_v0(correlation_id: int = 1, version: int = 0) -> bytes:
    return request(API_API_VERSIONS, version, correlation_id)


def parse_api_versions_v0(frame: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """-> (correlation_id, error_code, {api_key: (min, max)}) from a v0-format response."""
    r = Reader(frame)
    corr = r.i32()
    err = r.i16()
    n = r.i32()
    assert 0 <= n <= 1000, f"ApiVersions: implausible array length {n}"
    apis = {}
    for _ in range(n):
        k, lo, hi = r.take(">hhh")
        apis[k] = (lo, hi)
    return corr, err, apis


def metadata_v1(topics: list[str] | None, correlation_id: int = 1) -> bytes:
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(string(t) for t in topics)
    return request(API_METADATA, 1, correlation_id, body)


def parse_metadata_v1(frame: bytes) -> tuple[int, list, dict[str, tuple[int, int]]]:
    """-> (correlation_id, brokers [(id, host, port)], {topic: (error_code, partition_count)})."""
    r = Reader(frame)
    corr = r.i32()
    brokers = []
    for _ in range(r.i32()):
        node, host, port, _rack = r.i32(), r.string(), r.i32(), r.string()
        brokers.append((node, host, port))
    r.i32()  # controller id
    topics = {}
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.string(), r.i8()
        nparts = r.i32()
        for _ in range(nparts):
            r.i16(), r.i32(), r.i32()  # error, partition, leader
            for _ in range(r.i32()):
                r.i32()  # replicas
            for _ in range(r.i32()):
                r.i32()  # isr
        topics[name] = (err, nparts)
    return corr, brokers, topics


def record_batch(records: list[tuple[bytes | None, bytes | None]], timestamp_ms: int, producer_id: int = -1,
                 producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """A magic-2 record batch (uncompressed), built with kafka-python's encoder; an
    idempotent one when given a producer id, epoch and base sequence."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=producer_id,
                                  producer_epoch=producer_epoch, base_sequence=base_sequence,
                                  batch_size=1 << 20)
    for i, (k, v) in enumerate(records):
        b.append(i, timestamp=timestamp_ms, key=k, value=v, headers=[])
    return bytes(b.build())


def produce_request(version: int, topic: str, partition: int, batch: bytes, correlation_id: int = 1,
                    acks: int = -1, timeout_ms: int = 10000) -> bytes:
    """Produce v3..v8 (the non-flexible versions with magic-2 batches)."""
    assert 3 <= version <= 8
    body = string(None) + struct.pack(">hi", acks, timeout_ms)
    body += struct.pack(">i", 1) + string(topic)
    body += struct.pack(">i", 1) + struct.pack(">i", partition) + struct.pack(">i", len(batch)) + batch
    return request(API_PRODUCE, version, correlation_id, body)


def parse_produce_first_error(frame: bytes) -> tuple[int, str, int, int]:
    """-> (correlation_id, topic, partition, error_code) of the first partition."""
    r = Reader(frame)
    corr = r.i32()
    assert r.i32() >= 1, "produce response without topics"
    topic = r.string()
    assert r.i32() >= 1, "produce response without partitions"
    part = r.i32()
    err = r.i16()
    return corr, topic, part, err


def parse_produce_first(frame: bytes) -> tuple[int, int]:
    """-> (error_code, base_offset) of the first partition of a Produce v3..v8 response."""
    r = Reader(frame)
    r.i32()  # correlation id
    assert r.i32() >= 1, "produce response without topics"
    r.string()
    assert r.i32() >= 1, "produce response without partitions"
    r.i32()  # partition
    err = r.i16()
    return err, r.i64()


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def init_producer_id_request(version: int, transactional_id: str | None = None, producer_id: int = -1,
                             producer_epoch: int = -1, correlation_id: int = 1) -> bytes:
    """InitProducerId v0/v1 (classic encoding) or v3 (flexible: request header v2,
    compact strings, empty tagged fields; carries producer_id/epoch for KIP-360)."""
    assert version in (0, 1, 3)
    if version < 2:
        body = string(transactional_id) + struct.pack(">i", 60000)
        return request(API_INIT_PRODUCER_ID, version, correlation_id, body)
    if transactional_id is None:
        tid = uvarint(0)
    else:
        tid = uvarint(len(transactional_id.encode()) + 1) + transactional_id.encode()
    body = tid + struct.pack(">iqh", 60000, producer_id, producer_epoch) + uvarint(0)
    header = struct.pack(">hhi", API_INIT_PRODUCER_ID, version, correlation_id) + string("strata-e2e") + uvarint(0)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def parse_init_producer_id(frame: bytes, version: int) -> tuple[int, int, int]:
    """-> (error_code, producer_id, producer_epoch)."""
    r = Reader(frame)
    r.i32()  # correlation id
    if version >= 2:
        assert r.i8() == 0, "unexpected tagged fields in the response header"
    r.i32()  # throttle
    return r.i16(), r.i64(), r.i16()
