"""kafka-python against a running `quiver server` (run by tests/kafka_clients.rs).

Usage: kafka_python_clients.py seed PORT
       kafka_python_clients.py codecs BOOTSTRAP
       kafka_python_clients.py at-rest BOOTSTRAP

Exits non-zero (with a traceback saying what differed) when the broker misbehaves. Every wait is
bounded.
"""

import sys
import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

WAIT_S = 60


def seed(port):
    """The two snippets a new user tries first, verbatim but for the port and a timeout.

    The consumer starts at the log end (kafka-python's default), so it is started first and the
    producer sends only once the consumer knows its position."""
    received = []
    positioned = threading.Event()
    failed = []

    def consume():
        try:
            consumer = KafkaConsumer('orders', bootstrap_servers=f'localhost:{port}',
                                     consumer_timeout_ms=WAIT_S * 1000)
            # Wait for the assignment, then resolve the starting offsets (the log end) before
            # the producer is let go; otherwise the message could land before that position.
            deadline = time.monotonic() + WAIT_S
            while not consumer.assignment():
                assert time.monotonic() < deadline, "the consumer got no partitions of 'orders'"
                consumer.poll(timeout_ms=100)
            starts = {tp: consumer.position(tp, timeout_ms=WAIT_S * 1000)
                      for tp in consumer.assignment()}
            print(f"consumer assigned {sorted(starts.items())}")
            positioned.set()
            for message in consumer:
                received.append(message)
                break
            consumer.close()
        except BaseException as e:  # reported by the main thread
            failed.append(e)
            positioned.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert positioned.wait(WAIT_S), "the consumer did not start within the timeout"
    assert not failed, f"consumer failed: {failed[0]!r}"

    producer = KafkaProducer(bootstrap_servers=f'localhost:{port}')
    future = producer.send('orders', b'New order created')
    producer.flush(timeout=WAIT_S)
    meta = future.get(timeout=WAIT_S)
    print(f"produced to partition {meta.partition} offset {meta.offset}")
    producer.close(timeout=WAIT_S)

    t.join(WAIT_S + 5)
    assert not t.is_alive(), "the consumer is still waiting"
    assert not failed, f"consumer failed: {failed[0]!r}"
    assert len(received) == 1, "the consumer's loop ended without a message"
    m = received[0]
    assert (m.topic, m.value) == ('orders', b'New order created'), m
    assert (m.partition, m.offset) == (meta.partition, meta.offset), (m, meta)
    print("seed snippets: ok")


def consume_all(bootstrap, topic, n):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset='earliest',
                             consumer_timeout_ms=10_000)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    consumer.close()
    return got


def codecs(bootstrap):
    """Keyed records with headers round trip in every codec kafka-python speaks."""
    n = 300
    for codec in ['gzip', 'lz4', 'snappy', 'zstd']:
        topic = f'py-{codec}'
        producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec,
                                 linger_ms=20, acks='all')
        futures = []
        for i in range(n):
            # Repetitive values so that compression has something to do.
            value = f'{codec} value {i} '.encode() * 20
            headers = [('i', str(i).encode()), ('codec', codec.encode())]
            futures.append(producer.send(topic, key=f'key-{i % 17}'.encode(), value=value,
                                         headers=headers, partition=0))
        producer.flush(timeout=WAIT_S)
        offsets = [f.get(timeout=WAIT_S).offset for f in futures]
        assert offsets == list(range(n)), f'{codec}: acknowledged offsets {offsets[:10]}...'
        producer.close(timeout=WAIT_S)

        got = consume_all(bootstrap, topic, n)
        assert len(got) == n, f'{codec}: consumed {len(got)} of {n}'
        for i, m in enumerate(got):
            assert m.offset == i, f'{codec}: record {i} has offset {m.offset}'
            assert m.key == f'key-{i % 17}'.encode(), f'{codec}: record {i} key {m.key!r}'
            assert m.value == f'{codec} value {i} '.encode() * 20, f'{codec}: record {i} value'
            assert list(m.headers) == [('i', str(i).encode()), ('codec', codec.encode())], \
                f'{codec}: record {i} headers {m.headers!r}'
        print(f'{codec}: {n} records round trip')
    print('codecs: ok')


def at_rest(bootstrap):
    """Topics with a compression.type: records an uncompressed producer sends (one per request
    and in batches) are stored compressed and come back whole, in the topic's codec."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    codecs_ = ['gzip', 'lz4', 'snappy', 'zstd']
    admin.create_topics([NewTopic(f'at-rest-{c}', 1, 1, topic_configs={'compression.type': c})
                         for c in codecs_])
    for codec in codecs_:
        topic = f'at-rest-{codec}'
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = next(iter(described.values()))[topic]
        value = entries.get('compression.type')
        value = value.get('value') if isinstance(value, dict) else value
        assert value == codec, f'{topic}: {entries}'
        single = KafkaProducer(bootstrap_servers=bootstrap, acks='all')  # linger 0: one per request
        for i in range(5):
            single.send(topic, key=b'k', value=f'{{"n":{i},"single":true}}'.encode(),
                        partition=0).get(timeout=WAIT_S)
        single.close(timeout=WAIT_S)
        batched = KafkaProducer(bootstrap_servers=bootstrap, acks='all', linger_ms=20)
        for i in range(5, 505):
            batched.send(topic, key=f'k{i % 9}'.encode(),
                         value=f'{{"n":{i},"region":"eu-west-1","status":"created"}}'.encode(),
                         headers=[('n', str(i).encode())], partition=0)
        batched.flush(timeout=WAIT_S)
        batched.close(timeout=WAIT_S)
        got = consume_all(bootstrap, topic, 505)
        assert len(got) == 505, f'{topic}: consumed {len(got)} of 505'
        for i, m in enumerate(got):
            assert m.offset == i, f'{topic}: record {i} has offset {m.offset}'
            if i < 5:
                assert m.value == f'{{"n":{i},"single":true}}'.encode(), f'{topic}: {m.value!r}'
            else:
                assert m.key == f'k{i % 9}'.encode(), f'{topic}: record {i} key {m.key!r}'
                assert m.headers == [('n', str(i).encode())], f'{topic}: {m.headers!r}'
        print(f'{topic}: 505 records round trip')
    admin.close()
    print('at-rest: ok')


def main():
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == 'seed':
        seed(int(arg))
    elif cmd == 'codecs':
        codecs(arg)
    elif cmd == 'at-rest':
        at_rest(arg)
    else:
        sys.exit(f'unknown command {cmd!r}')


if __name__ == '__main__':
    main()
