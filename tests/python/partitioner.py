"""Keyed records from confluent-kafka with Java's partitioner (`murmur2_random`) land where Java's
default partitioner puts them (run by tests/kafka_clients.rs against a running `quiver server`).

Usage: partitioner.py BOOTSTRAP

Where each key landed is read back by consuming every partition; the expected partition is
`(murmur2(key) & 0x7fffffff) % partitions` with Kafka's murmur2, whose values are checked first
against the vectors of Kafka's own UtilsTest.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 30
TOPIC = 'keyed'
PARTITIONS = 6

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
KAFKA_VECTORS = {
    b'21': -973932308,
    b'foobar': -790332482,
    b'a-little-bit-long-string': -985981536,
    b'a-little-bit-longer-string': -1486304829,
    b'lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8': -58897971,
    b'abc': 479470107,
}


def murmur2(data):
    """Kafka's murmur2 (Utils.murmur2) as a signed 32-bit int."""
    m, r = 0x5bd1e995, 24
    mask = 0xffffffff
    length = len(data)
    h = (0x9747b28c ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], 'little')
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length % 4
    if rest >= 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(hash32, partitions):
    return (hash32 & 0x7fffffff) % partitions


def main():
    bootstrap = sys.argv[1]
    for key, want in KAFKA_VECTORS.items():
        assert murmur2(key) == want, f'murmur2({key!r}) = {murmur2(key)}, Kafka says {want}'

    admin = AdminClient({'bootstrap.servers': bootstrap})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                                  operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
    futures[TOPIC].result(timeout=TIMEOUT_S)

    # The Kafka vectors with their partitions computed from Kafka's numbers, and more keys whose
    # partitions come from the (checked) murmur2 above; every partition gets some.
    expected = {key: java_partition(h, PARTITIONS) for key, h in KAFKA_VECTORS.items()}
    for i in range(200):
        key = f'customer-{i}'.encode()
        expected[key] = java_partition(murmur2(key), PARTITIONS)
    assert set(expected.values()) == set(range(PARTITIONS)), 'keys should cover every partition'

    errors = []
    p = Producer({'bootstrap.servers': bootstrap, 'partitioner': 'murmur2_random', 'linger.ms': 5})
    for round_ in range(2):  # twice: a key keeps its partition
        for key in expected:
            p.produce(TOPIC, key=key, value=b'round %d' % round_,
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(TIMEOUT_S) == 0, 'records not delivered'
    assert not errors, f'delivery errors: {errors[:5]}'

    landed = {}  # key -> set of partitions
    total = 0
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': 'partitioner-check',
                  'enable.auto.commit': False})
    for partition in range(PARTITIONS):
        lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=TIMEOUT_S,
                                         cached=False)
        c.assign([TopicPartition(TOPIC, partition, lo)])
        seen = 0
        deadline = time.monotonic() + TIMEOUT_S
        while seen < hi - lo:
            assert time.monotonic() < deadline, f'partition {partition}: read {seen} of {hi - lo}'
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            assert m.partition() == partition
            landed.setdefault(m.key(), set()).add(partition)
            seen += 1
        total += seen
        print(f'partition {partition}: {seen} records')
    c.close()

    assert total == 2 * len(expected), f'read {total} records, produced {2 * len(expected)}'
    wrong = {k: (sorted(landed.get(k, ())), want) for k, want in expected.items()
             if landed.get(k) != {want}}
    assert not wrong, f'keys in the wrong partition (landed, Java\'s): {wrong}'
    print(f'{len(expected)} keys in the partitions Java picks: ok')


if __name__ == '__main__':
    main()
