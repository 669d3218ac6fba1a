"""Wait until a SeaweedFS S3 endpoint answers a signed HEAD for BUCKET and takes a write to it.

The bucket's first write makes SeaweedFS grow a volume for its collection, which can take
seconds on a busy machine; doing it here keeps that out of the tests' 5 s start-up probes.

Usage: wait_s3.py PORT BUCKET TIMEOUT_SECONDS   (exit 0 when ready, 1 otherwise)
"""

import http.client
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import harness  # noqa: E402


def main():
    port, bucket, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            host = f"127.0.0.1:{port}"
            status, _ = harness.s3_request(host, "HEAD", bucket, "", {}, b"")
            if status == 200:
                status, _ = harness.s3_request(host, "PUT", bucket, ".wait-s3-warmup", {}, b"x")
                if status == 200:
                    harness.s3_request(host, "DELETE", bucket, ".wait-s3-warmup", {}, b"")
                    return 0
                last = f"warm-up PUT: HTTP {status}"
            else:
                last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.25)
    print(f"S3 on 127.0.0.1:{port} not ready for bucket {bucket} after {timeout}s: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
