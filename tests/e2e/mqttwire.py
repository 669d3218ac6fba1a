"""MQTT packets by hand, for the tests that must control every byte a client sends (which
acknowledgement to withhold, which PUBLISH to send again with DUP) — something paho decides by
itself. Only what the tests use: CONNECT, PUBLISH, the QoS acknowledgements, SUBSCRIBE."""

from __future__ import annotations

import socket
import struct

WAIT = 30.0

CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xC0, 0xD0, 0xE0, 0xF0)


def utf8(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, version: int = 5, clean: bool = True, props: bytes = b"",
                   user: str | None = None, password: str | None = None, keep_alive: int = 30) -> bytes:
    """A CONNECT: protocol `version` 4 (3.1.1) or 5, MQTT 5 `props` (without their length)."""
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    body = utf8(b"MQTT") + bytes([version, flags]) + struct.pack(">H", keep_alive)
    if version == 5:
        body += varint(len(props)) + props
    body += utf8(client_id.encode())
    if user is not None:
        body += utf8(user.encode())
    if password is not None:
        body += utf8(password.encode())
    return packet(0x10, body)


def read_varint(data: bytes, i: int) -> tuple[int, int] | None:
    """The variable byte integer at `data[i:]` and the index after it; None if cut short."""
    mult, n = 1, 0
    while i < len(data):
        b = data[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            return n, i
    return None


def mqtt_packets(data: bytes) -> list[tuple[int, bytes]]:
    """Splits a byte stream into (first byte, body) MQTT packets; an incomplete last packet is
    left out."""
    out, i = [], 0
    while i < len(data):
        got = read_varint(data, i + 1)
        if got is None or got[1] + got[0] > len(data):
            return out
        rl, j = got
        out.append((data[i], data[j:j + rl]))
        i = j + rl
    return out


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """The next whole packet on `sock`: (first byte, body). Fails if the connection closes."""
    def exactly(n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            assert chunk, f"connection closed after {got!r}"
            got += chunk
        return got

    first = exactly(1)[0]
    length, shift = 0, 0
    while True:
        b = exactly(1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, exactly(length)


class RawClient:
    """One MQTT connection over a plain socket: `v5` or 3.1.1, clean start or not (a persistent
    MQTT 5 session asks for `expiry` seconds). The CONNACK is read; `session_present` is its
    flag."""

    def __init__(self, port: int, client_id: str, v5: bool = True, clean: bool = True,
                 expiry: int = 0xFFFFFFFF, receive_max: int | None = None):
        self.v5 = v5
        self.buf = b""
        props = b"" if clean or not v5 else b"\x11" + struct.pack(">I", expiry)
        if v5 and receive_max is not None:
            props += b"\x21" + struct.pack(">H", receive_max)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.sendall(connect_packet(client_id, 5 if v5 else 4, clean, props))
        first, ack = self.next()
        assert first == CONNACK and ack[1] == 0, f"CONNACK success expected, got {first:#x} {ack!r}"
        self.session_present = bool(ack[0] & 1)

    def _props(self) -> bytes:
        return b"\x00" if self.v5 else b""

    def next(self) -> tuple[int, bytes]:
        """The next packet from the broker (waits up to WAIT)."""
        while True:
            got = mqtt_packets(self.buf)
            if got:
                first, body = got[0]
                self.buf = self.buf[1 + len(varint(len(body))) + len(body):]
                return first, body
            chunk = self.sock.recv(65536)
            assert chunk, "the broker closed the connection"
            self.buf += chunk

    def expect(self, kind: int) -> bytes:
        first, body = self.next()
        assert first & 0xF0 == kind, f"expected packet {kind:#x}, got {first:#x} {body!r}"
        return body

    def subscribe(self, topic_filter: str, qos: int, packet_id: int = 1) -> None:
        body = struct.pack(">H", packet_id) + self._props() + utf8(topic_filter.encode()) + bytes([qos])
        self.sock.sendall(packet(0x82, body))
        ack = self.expect(SUBACK)
        assert ack[-1] == qos, f"granted {ack[-1]:#x}, asked {qos}"

    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int, dup: bool = False) -> None:
        first = PUBLISH | (0x08 if dup else 0) | (qos << 1)
        body = utf8(topic.encode()) + (struct.pack(">H", packet_id) if qos else b"") + self._props() + payload
        self.sock.sendall(packet(first, body))

    def ack(self, kind: int, packet_id: int, reason: int = 0) -> None:
        """PUBACK, PUBREC, PUBREL or PUBCOMP for `packet_id` (MQTT 5: with `reason`)."""
        body = struct.pack(">H", packet_id) + (bytes([reason]) if reason else b"")
        self.sock.sendall(packet(kind | (0x02 if kind == PUBREL else 0), body))

    def ping(self) -> None:
        """PINGREQ, and waits for PINGRESP: the broker answers packets in order, so everything
        sent before has been read when this returns."""
        self.sock.sendall(bytes([PINGREQ, 0]))
        self.expect(PINGRESP)

    def drop(self) -> None:
        """The connection breaks: no DISCONNECT."""
        self.sock.close()


def ack_id_and_reason(body: bytes) -> tuple[int, int]:
    """A PUBACK/PUBREC/PUBREL/PUBCOMP body: (packet id, reason code; 0 when left out)."""
    return struct.unpack(">H", body[:2])[0], body[2] if len(body) > 2 else 0


def properties(data: bytes) -> dict[int, object]:
    """MQTT 5 properties (their length first) by id: strings decoded, binary data as bytes,
    integers as int; user properties as a list of pairs under 0x26."""
    length, i = read_varint(data, 0)
    end, out = i + length, {}
    def string(i: int) -> tuple[bytes, int]:
        n = struct.unpack(">H", data[i:i + 2])[0]
        return data[i + 2:i + 2 + n], i + 2 + n
    while i < end:
        pid, i = data[i], i + 1
        if pid in (0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F):  # UTF-8 strings
            v, i = string(i)
            out[pid] = v.decode()
        elif pid in (0x09, 0x16):  # binary data
            out[pid], i = string(i)
        elif pid == 0x26:
            k, i = string(i)
            v, i = string(i)
            out.setdefault(pid, []).append((k.decode(), v.decode()))
        elif pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
            out[pid], i = data[i], i + 1
        elif pid in (0x13, 0x21, 0x22, 0x23):
            out[pid], i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif pid in (0x02, 0x11, 0x18, 0x27):
            out[pid], i = struct.unpack(">I", data[i:i + 4])[0], i + 4
        elif pid == 0x0B:
            out[pid], i = read_varint(data, i)
        else:
            raise ValueError(f"unknown property {pid:#x}")
    return out


def parse_publish(first: int, body: bytes, v5: bool) -> tuple[str, int, int | None, bool, bytes]:
    """(topic, qos, packet id, dup, payload) of a PUBLISH."""
    qos, dup = (first >> 1) & 3, bool(first & 0x08)
    tl = struct.unpack(">H", body[:2])[0]
    topic, rest = body[2:2 + tl].decode(), body[2 + tl:]
    pid = None
    if qos:
        pid, rest = struct.unpack(">H", rest[:2])[0], rest[2:]
    if v5:
        plen, i = read_varint(rest, 0)
        rest = rest[i + plen:]
    return topic, qos, pid, dup, rest
