"""A confluent-kafka consumer in a group, run as its own process so a test can kill -9 it.

Usage: group_consumer.py BOOTSTRAP GROUP TOPIC SESSION_TIMEOUT_MS

Prints `assigned P,P,...` (sorted partitions) each time its assignment changes and commits
what it reads. Runs until killed.
"""

import sys

from confluent_kafka import Consumer


def main():
    bootstrap, group, topic, session_ms = sys.argv[1:5]
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": int(session_ms),
        "heartbeat.interval.ms": 500,
    })
    last = None
    c.subscribe([topic])
    while True:
        msgs = c.consume(num_messages=1000, timeout=0.2)
        if any(m.error() is None for m in msgs):
            c.commit(asynchronous=False)
        parts = sorted(tp.partition for tp in c.assignment())
        if parts != last:
            last = parts
            print("assigned " + ",".join(map(str, parts)), flush=True)


if __name__ == "__main__":
    main()
