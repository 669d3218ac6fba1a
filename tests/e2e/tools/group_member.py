"""One consumer-group member in its own process, so a test can kill -9 it: t70's
ConfluentMember or KafkaPythonMember (imported from t70, not copied).

Usage: group_member.py CLIENT BOOTSTRAP GROUP TOPIC      (CLIENT: confluent | kafka-python)

Prints JSON lines on stdout:
  {"assigned": [P, ...]}            each time its assignment changes (sorted partitions)
  {"p": P, "o": O, "v": "VALUE"}    each record it reads, before committing it
  {"committed": N}                  after the records of a poll are committed (N: how many)
  {"commit_error": "..."}           a commit that failed (the records may come again)
Runs until SIGTERM (then closes the consumer, leaving the group) or SIGKILL.
"""

import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t70_consumer_groups_test import CLIENTS  # noqa: E402


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    client, bootstrap, group, topic = sys.argv[1:5]
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    member = CLIENTS[client](bootstrap, group, topic)
    last = None
    while not stop:
        got = member.poll(0.2)
        for p, o, v in got:
            emit({"p": p, "o": o, "v": v.decode()})
        if got:
            try:
                member.commit()
                emit({"committed": len(got)})
            except Exception as e:  # noqa: BLE001 - reported to the test, which decides
                emit({"commit_error": str(e)})
        parts = sorted(member.assignment())
        if parts != last:
            last = parts
            emit({"assigned": parts})
    member.close()


if __name__ == "__main__":
    main()
