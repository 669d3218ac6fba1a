"""Produce numbered records (acks=all, no idempotence) and append every
*acknowledged* record to a file as "partition offset value\\n".

Usage: ack_producer.py BOOTSTRAP TOPIC PARTITIONS OUT_FILE FIRST_NUMBER MAX_SECONDS MAX_RECORDS [idempotent]

Stops on SIGTERM, after MAX_SECONDS or after MAX_RECORDS, writes what was
acknowledged so far and exits at once (without waiting for in-flight records:
the test kills the broker under it). A line is written whole, so a reader may
drop an unterminated last line only if the process was SIGKILLed.
"""

import os
import signal
import sys
import time

from confluent_kafka import Producer


def main():
    bootstrap, topic, partitions, out_path, first, max_seconds, max_records = sys.argv[1:8]
    partitions, first, max_seconds, max_records = int(partitions), int(first), float(max_seconds), int(max_records)
    idempotent = sys.argv[8:9] == ["idempotent"]
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    acked = []
    errors = 0

    def on_delivery(err, msg):
        nonlocal errors
        if err is None:
            acked.append(b"%d %d %s\n" % (msg.partition(), msg.offset(), msg.value()))
        else:
            errors += 1

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": idempotent,
        "linger.ms": 2,
        "message.timeout.ms": 60000,
        "queue.buffering.max.messages": 20000,
        "reconnect.backoff.max.ms": 200,
    })
    out = open(out_path, "ab", buffering=0)
    deadline = time.monotonic() + max_seconds
    n = first
    sent = 0
    while not stop and sent < max_records and time.monotonic() < deadline:
        try:
            p.produce(topic, value=b"v-%012d" % n, partition=n % partitions, on_delivery=on_delivery)
            n += 1
            sent += 1
        except BufferError:
            p.poll(0.01)
        if sent % 500 == 0:
            p.poll(0)
        if acked:
            out.write(b"".join(acked))
            acked.clear()
    p.poll(0)
    if acked:
        out.write(b"".join(acked))
    out.close()
    sys.stderr.write(f"ack_producer: sent {sent}, delivery errors {errors}\n")
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
