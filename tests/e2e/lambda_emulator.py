"""A small AWS Lambda Runtime API emulator (API version 2018-06-01) for the e2e tests.

The function under test (the `bootstrap` binary) is started with
AWS_LAMBDA_RUNTIME_API=127.0.0.1:<port> and polls this server like it polls Lambda:

- GET  /2018-06-01/runtime/invocation/next       blocks until `invoke()` queues an event; answers
  it with Lambda-Runtime-Aws-Request-Id, -Deadline-Ms, -Invoked-Function-Arn and -Trace-Id;
- POST /2018-06-01/runtime/invocation/{id}/response   the function's answer (202);
- POST /2018-06-01/runtime/invocation/{id}/error      the function's error (202);
- POST /2018-06-01/runtime/init/error                 the function could not start (202).

`invoke(event, timeout)` returns `(ok, payload)`: `(True, response)` or `(False, error body)`;
after an init error every invocation answers `(False, init error body)`. Bodies may arrive
chunked (the Rust runtime streams them); both framings are read.

`function_url_event(...)` builds the event a Lambda function URL (API Gateway HTTP API,
payload format 2.0) sends for a request.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlencode

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:strata-e2e-http"


class _Pending:
    def __init__(self, event, deadline_ms: int):
        self.id = str(uuid.uuid4())
        self.event = event
        self.deadline_ms = deadline_ms
        self.done = threading.Event()
        self.result: tuple[bool, object] | None = None


class LambdaEmulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._events: "queue.Queue[_Pending]" = queue.Queue()
        self._by_id: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self.init_error: object | None = None
        self._init_failed = threading.Event()
        self.invocations = 0
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            # trailers until the empty line
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()  # CRLF after the chunk
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != PREFIX + "/invocation/next":
                    return self._answer(404, b'{"errorMessage":"unknown path"}')
                # Blocks like Lambda does, until there is an event.
                while True:
                    try:
                        p = emulator._events.get(timeout=1)
                        break
                    except queue.Empty:
                        continue
                body = json.dumps(p.event).encode()
                self._answer(200, body, {
                    "Lambda-Runtime-Aws-Request-Id": p.id,
                    "Lambda-Runtime-Deadline-Ms": str(p.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                    "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0",
                })

            def do_POST(self):
                body = self._body()
                try:
                    payload = json.loads(body) if body else None
                except ValueError:
                    payload = body.decode(errors="replace")
                path = self.path
                if path == PREFIX + "/init/error":
                    emulator.init_error = payload
                    emulator._init_failed.set()
                    return self._answer(202, b'{"status":"OK"}')
                parts = path[len(PREFIX):].strip("/").split("/")
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with emulator._lock:
                        p = emulator._by_id.pop(parts[1], None)
                    if p is None:
                        return self._answer(400, b'{"errorMessage":"unknown request id"}')
                    p.result = (parts[2] == "response", payload)
                    p.done.set()
                    return self._answer(202, b'{"status":"OK"}')
                return self._answer(404, b'{"errorMessage":"unknown path"}')

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # The function was killed while its `next` call waited: nothing to report.
                pass

        self._server = Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api(self) -> str:
        """The value of AWS_LAMBDA_RUNTIME_API for the function."""
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> "LambdaEmulator":
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def env(self, function_name: str = "strata-e2e-http") -> dict:
        """The environment Lambda gives a function (what lambda_runtime reads)."""
        return {
            "AWS_LAMBDA_RUNTIME_API": self.api,
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "e2e",
        }

    def wait_init_error(self, timeout: float) -> object | None:
        """The init error the function reported within `timeout`, else None."""
        self._init_failed.wait(timeout)
        return self.init_error

    def invoke(self, event, timeout: float = 60) -> tuple[bool, object]:
        """Queue `event`, wait for the function's answer: (ok, payload)."""
        if self.init_error is not None:
            return False, self.init_error
        p = _Pending(event, int((time.time() + timeout) * 1000))
        with self._lock:
            self._by_id[p.id] = p
        self.invocations += 1
        self._events.put(p)
        deadline = time.monotonic() + timeout
        while not p.done.wait(0.1):
            if self._init_failed.is_set():
                return False, self.init_error
            if time.monotonic() > deadline:
                raise TimeoutError(f"the function did not answer invocation {p.id} within {timeout}s")
        return p.result


def function_url_event(method: str, path: str, query: dict | None = None, body=None,
                       headers: dict | None = None, binary: bool = False) -> dict:
    """The payload-2.0 event of a function URL request. `body`: a str/bytes, or a JSON-able
    object (sent as JSON). `binary` sends the body base64-encoded, as Lambda does for
    non-text content types."""
    hdrs = {"host": "abc.lambda-url.us-east-1.on.aws", "user-agent": "e2e"}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        hdrs["content-type"] = "application/json"
    hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
    raw_query = urlencode(query or {})
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abc",
            "domainName": hdrs["host"],
            "domainPrefix": "abc",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "e2e",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = {k: str(v) for k, v in query.items()}
    if body is not None:
        if isinstance(body, str):
            body = body.encode()
        if binary:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = body.decode()
    return event


def scheduled_event() -> dict:
    """An EventBridge scheduled event."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/strata-maintenance"],
        "detail": {},
    }


def http_answer(payload) -> tuple[int, dict]:
    """(status, JSON body) of a function URL answer (payload 2.0 response)."""
    assert isinstance(payload, dict) and "statusCode" in payload, f"not an HTTP answer: {payload!r}"
    body = payload.get("body") or ""
    if payload.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return payload["statusCode"], (json.loads(body) if body else {})
