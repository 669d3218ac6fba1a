"""Wait until a SeaweedFS S3 endpoint answers a signed HEAD for BUCKET.

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
            status, _ = harness.s3_request(f"127.0.0.1:{port}", "HEAD", bucket, "", {}, b"")
            if status == 200:
                return 0
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.25)
    print(f"S3 on 127.0.0.1:{port} not ready for bucket {bucket} after {timeout}s: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
