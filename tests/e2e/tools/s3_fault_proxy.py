"""A fault-injecting HTTP reverse proxy for an S3 server (pure stdlib, asyncio).

It listens on 127.0.0.1, forwards every request byte for byte to the upstream S3 server
(SigV4 signatures stay valid: the client signed the Host it sent, and the proxy does not
touch the request), and, while a fault mode is set, fails the requests it selects instead:

| mode      | what the client sees                                                         |
| --------- | ---------------------------------------------------------------------------- |
| `pass`    | the upstream's answer (no fault)                                             |
| `503`     | `503 Slow Down` with S3's XML error body (`<Code>SlowDown</Code>`)           |
| `500`     | `500 Internal Server Error` with `<Code>InternalError</Code>`                 |
| `timeout` | nothing: the request is read and held unanswered (a blackhole) until the     |
|           | client gives up; held requests stay held after healing                       |
| `reset`   | the connection is reset (TCP RST) after the request is read                  |

A fault applies to requests whose method is in `methods` (default: every method), so a
test can fail only writes (`PUT`, `POST`: single PUTs, multipart parts, initiate and complete)
and keep reads working. The request body is always read first, so the client never sees a
reset while it is still sending (except in `reset` mode, which is the point).

Two ways to drive it:

- In-process (the e2e tests): `p = S3FaultProxy(upstream_port).start()`, then
  `p.set_mode("503", methods={"PUT", "POST"})`, `p.set_mode("pass")`, `p.stats()`, `p.stop()`.
  The proxy runs its own event loop on a daemon thread.
- Standalone: `python3 s3_fault_proxy.py UPSTREAM_PORT [LISTEN_PORT]` prints the port it
  listens on; `GET /__proxy__/mode?mode=503&methods=PUT,POST` sets the mode and
  `GET /__proxy__/stats` returns the counters as JSON (these paths are never forwarded).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import threading
import urllib.parse

MODES = ("pass", "503", "500", "timeout", "reset")

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>")
INTERNAL_ERROR = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>"
                  b"<Message>We encountered an internal error. Please try again.</Message>"
                  b"<RequestId>fault-proxy</RequestId></Error>")

# Bounds: a request or response head larger than this is refused (the proxy is a test tool,
# but it should not buffer without limit).
HEAD_BYTES_MAX = 64 * 1024
COPY_CHUNK_BYTES = 256 * 1024
CONTROL_PREFIX = "/__proxy__/"


class BadMessage(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The head of one HTTP message (through the blank line), or None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise BadMessage("connection closed inside a message head") from e
    except asyncio.LimitOverrunError as e:
        raise BadMessage("message head too large") from e
    if len(head) > HEAD_BYTES_MAX:
        raise BadMessage("message head too large")
    return head


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def _copy_body(reader: asyncio.StreamReader, headers: dict[str, str], sink, *, until_eof: bool) -> None:
    """Copies one message body (content-length, chunked, or — for a response without
    either — until EOF) from `reader` to `sink(bytes)` (an async callable, or None to drop)."""
    te = headers.get("transfer-encoding", "").lower()
    if "chunked" in te:
        while True:
            line = await reader.readuntil(b"\r\n")
            if sink:
                await sink(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers, then the blank line.
                while True:
                    trailer = await reader.readuntil(b"\r\n")
                    if sink:
                        await sink(trailer)
                    if trailer == b"\r\n":
                        return
            left = size + 2  # the chunk and its CRLF
            while left:
                data = await reader.read(min(left, COPY_CHUNK_BYTES))
                if not data:
                    raise BadMessage("connection closed inside a chunk")
                left -= len(data)
                if sink:
                    await sink(data)
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left:
            data = await reader.read(min(left, COPY_CHUNK_BYTES))
            if not data:
                raise BadMessage("connection closed inside a body")
            left -= len(data)
            if sink:
                await sink(data)
    elif until_eof:
        while True:
            data = await reader.read(COPY_CHUNK_BYTES)
            if not data:
                return
            if sink:
                await sink(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes the connection with a TCP RST (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class S3FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", listen_port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.port: int | None = None
        self._mode = "pass"
        self._methods: frozenset[str] | None = None
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {"forwarded": 0, "failed": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # -- control (thread-safe)
    def set_mode(self, mode: str, methods=None) -> None:
        """Sets the fault mode for requests from now on; `methods` (e.g. {"PUT", "POST"})
        limits it to those HTTP methods, None = every method."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
        with self._lock:
            self._mode = mode
            self._methods = frozenset(m.upper() for m in methods) if methods else None

    def mode(self) -> tuple[str, frozenset[str] | None]:
        with self._lock:
            return self._mode, self._methods

    def stats(self) -> dict[str, int]:
        """Counters: `forwarded`, `failed`, and `failed_<mode>` / `forwarded_<METHOD>`."""
        with self._lock:
            return dict(self._stats)

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._stats[name] = self._stats.get(name, 0) + 1

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle
    def start(self) -> "S3FaultProxy":
        self._thread = threading.Thread(target=self._run, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._start_error is not None:
            raise self._start_error
        if self.port is None:
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", self.listen_port, limit=HEAD_BYTES_MAX))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def serve_forever(self) -> None:
        """Standalone use: run on this thread."""
        self._run()

    # -- one client connection
    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(creader)
                if head is None:
                    return
                request_line, headers = _headers(head)
                method, _, rest = request_line.partition(" ")
                target = rest.rsplit(" ", 1)[0]
                if target.startswith(CONTROL_PREFIX):
                    await _copy_body(creader, headers, None, until_eof=False)
                    await self._control(target, cwriter)
                    continue
                mode, methods = self.mode()
                fault = mode != "pass" and (methods is None or method.upper() in methods)
                if not fault:
                    upstream = await self._forward(head, headers, method, creader, cwriter, upstream)
                    self._count("forwarded", f"forwarded_{method.upper()}")
                    continue
                # Read the whole request first: the fault is in the answer, not in the upload.
                await _copy_body(creader, headers, None, until_eof=False)
                self._count("failed", f"failed_{mode}", f"failed_{method.upper()}")
                if mode == "reset":
                    _reset(cwriter)
                    return
                if mode == "timeout":
                    # Hold it; the client's timeout ends it (we notice its close here).
                    await creader.read()
                    return
                status, body = ("503 Slow Down", SLOW_DOWN) if mode == "503" else \
                    ("500 Internal Server Error", INTERNAL_ERROR)
                cwriter.write(f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
                              f"Content-Length: {len(body)}\r\nx-amz-request-id: fault-proxy\r\n\r\n"
                              .encode() + body)
                await cwriter.drain()
        except (BadMessage, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            if not cwriter.transport.is_closing():
                cwriter.close()

    async def _forward(self, head, headers, method, creader, cwriter, upstream):
        """Sends one request upstream (reusing the connection) and relays its answer.
        Returns the upstream connection to reuse, or None when it closed."""
        if upstream is None:
            upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_BYTES_MAX)
        ureader, uwriter = upstream
        uwriter.write(head)

        async def to_upstream(data: bytes):
            uwriter.write(data)
            await uwriter.drain()

        await _copy_body(creader, headers, to_upstream, until_eof=False)
        await uwriter.drain()
        rhead = await _read_head(ureader)
        if rhead is None:
            raise ConnectionError("upstream closed without answering")
        status_line, rheaders = _headers(rhead)
        cwriter.write(rhead)

        async def to_client(data: bytes):
            cwriter.write(data)
            await cwriter.drain()

        status = int(status_line.split(" ", 2)[1])
        no_body = method.upper() == "HEAD" or status in (204, 304) or 100 <= status < 200
        if not no_body:
            await _copy_body(ureader, rheaders, to_client, until_eof=True)
        await cwriter.drain()
        closing = rheaders.get("connection", "").lower() == "close" or (
            not no_body and "content-length" not in rheaders and "chunked" not in rheaders.get("transfer-encoding", ""))
        if closing:
            uwriter.close()
            return None
        return upstream

    async def _control(self, target: str, cwriter: asyncio.StreamWriter) -> None:
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        status, body = "200 OK", {}
        try:
            if url.path == CONTROL_PREFIX + "mode":
                methods = [m for m in query.get("methods", "").split(",") if m]
                self.set_mode(query.get("mode", "pass"), methods or None)
                mode, methods = self.mode()
                body = {"mode": mode, "methods": sorted(methods) if methods else None}
            elif url.path == CONTROL_PREFIX + "stats":
                body = self.stats()
            else:
                status, body = "404 Not Found", {"error": f"unknown control path {url.path}"}
        except ValueError as e:
            status, body = "400 Bad Request", {"error": str(e)}
        data = json.dumps(body).encode()
        cwriter.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                      .encode() + data)
        await cwriter.drain()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: s3_fault_proxy.py UPSTREAM_PORT [LISTEN_PORT]", file=sys.stderr)
        return 2
    proxy = S3FaultProxy(int(argv[1]), listen_port=int(argv[2]) if len(argv) == 3 else 0)
    proxy.start()
    print(proxy.port, flush=True)
    try:
        proxy._thread.join()
    except KeyboardInterrupt:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
