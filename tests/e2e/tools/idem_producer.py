"""Produce numbered records with an idempotent confluent-kafka producer (acks=all,
enable.idempotence=true) and append every *acknowledged* record to a file as
"partition offset value\\n". Value n goes to partition n % PARTITIONS.

Usage: idem_producer.py BOOTSTRAP TOPIC PARTITIONS OUT_FILE SUMMARY_FILE MAX_SECONDS

Unlike ack_producer.py it is meant to outlive broker crashes: librdkafka keeps retrying
(same producer id, same sequence numbers) until the broker is back. On SIGTERM (or
after MAX_SECONDS) it stops producing, flushes (waits for every outstanding record to be
acknowledged or to fail), writes the acknowledged records and then SUMMARY_FILE as JSON:
{"sent": n, "acked": n, "errors": n, "fatal": [...], "unflushed": n}.
"""

import json
import signal
import sys
import time

from confluent_kafka import KafkaError, Producer


def main():
    bootstrap, topic, partitions, out_path, summary_path, max_seconds = sys.argv[1:7]
    partitions, max_seconds = int(partitions), float(max_seconds)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    acked = []
    counts = {"acked": 0, "errors": 0}
    delivery_errors = []
    fatal = []

    def on_delivery(err, msg):
        if err is None:
            counts["acked"] += 1
            acked.append(b"%d %d %s\n" % (msg.partition(), msg.offset(), msg.value()))
        else:
            counts["errors"] += 1
            if len(delivery_errors) < 20:
                delivery_errors.append(str(err))

    def on_error(err: KafkaError):
        # Broker-down transport errors are expected here; a fatal error is not.
        if err.fatal():
            fatal.append(str(err))

    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 180000,
        "queue.buffering.max.messages": 20000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 200,
        "retry.backoff.ms": 50,
        "retry.backoff.max.ms": 200,
        "error_cb": on_error,
    })
    out = open(out_path, "ab", buffering=0)
    deadline = time.monotonic() + max_seconds
    n = 0
    while not stop and not fatal and time.monotonic() < deadline:
        try:
            p.produce(topic, value=b"%012d" % n, partition=n % partitions, on_delivery=on_delivery)
            n += 1
        except BufferError:
            p.poll(0.01)
        if n % 200 == 0:
            p.poll(0)
            # A steady pace, so that a crash lands with requests in flight rather than
            # behind a full queue.
            time.sleep(0.002)
        if acked:
            out.write(b"".join(acked))
            acked.clear()
    unflushed = p.flush(120)
    if acked:
        out.write(b"".join(acked))
    out.close()
    summary = {"sent": n, "acked": counts["acked"], "errors": counts["errors"], "delivery_errors": delivery_errors,
               "fatal": fatal, "unflushed": unflushed}
    with open(summary_path, "w") as f:
        json.dump(summary, f)
    sys.stderr.write(f"idem_producer: {summary}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
