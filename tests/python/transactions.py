"""confluent-kafka's transactional producer against a running `quiver server`: the transaction
coordinator over the wire (FindCoordinator for a transactional id, InitProducerId,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn) and consumer-group offsets committed in transactions.

Usage: transactions.py BOOTSTRAP

1. creates `txn-input` with 2 partitions; a transactional producer commits offsets 10 and 20
   for group `txn-group` in a transaction: a consumer of the group sees them only afterwards
   (a read_uncommitted one gets the old offsets meanwhile; a read_committed one would wait,
   as its OffsetFetch requires stable offsets);
2. a second transaction commits 99 and 98 and is aborted: the group still has 10 and 20;
3. a second producer with the same transactional.id fences the first: the first one's next
   transaction fails with a fatal (fenced) error, the new one commits 30 and 40.

Every wait is bounded; the script fails with a message saying what differed.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = 'txn-input'
GROUP = 'txn-group'
TXN_ID = 'txn-script'
TIMEOUT_S = 60


def log(*args):
    print(*args, flush=True)


def fail(msg):
    log('FAIL:', msg)
    sys.exit(1)


def producer(bootstrap):
    p = Producer({
        'bootstrap.servers': bootstrap,
        'transactional.id': TXN_ID,
        'transaction.timeout.ms': 30000,
    })
    p.init_transactions(TIMEOUT_S)
    return p


def consumer(bootstrap, isolation='read_committed'):
    return Consumer({
        'bootstrap.servers': bootstrap,
        'group.id': GROUP,
        'enable.auto.commit': False,
        'isolation.level': isolation,
    })


def committed(c):
    parts = c.committed([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)], timeout=TIMEOUT_S)
    return [tp.offset for tp in parts]


def send_offsets(p, c, offsets):
    tps = [TopicPartition(TOPIC, i, o) for i, o in enumerate(offsets)]
    p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), TIMEOUT_S)


def main(bootstrap):
    admin = AdminClient({'bootstrap.servers': bootstrap})
    for f in admin.create_topics([NewTopic(TOPIC, num_partitions=2)]).values():
        f.result(TIMEOUT_S)

    c = consumer(bootstrap)
    peek = consumer(bootstrap, 'read_uncommitted')
    p = producer(bootstrap)
    before = committed(c)
    if any(o >= 0 for o in before):
        fail(f'fresh group has offsets {before}')

    p.begin_transaction()
    send_offsets(p, c, [10, 20])
    if committed(peek) != before:
        fail(f'offsets {committed(peek)} visible before the commit')
    p.commit_transaction(TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while committed(c) != [10, 20]:
        if time.monotonic() > deadline:
            fail(f'committed offsets {committed(c)}, expected [10, 20]')
        time.sleep(0.1)
    log('commit: ok')

    p.begin_transaction()
    send_offsets(p, c, [99, 98])
    p.abort_transaction(TIMEOUT_S)
    if committed(c) != [10, 20]:
        fail(f'after an abort the offsets are {committed(c)}, expected [10, 20]')
    log('abort: ok')

    newer = producer(bootstrap)
    try:
        p.begin_transaction()
        send_offsets(p, c, [1, 1])
        p.commit_transaction(TIMEOUT_S)
        fail('the fenced producer committed')
    except KafkaException as e:
        err = e.args[0]
        if not (err.fatal() or err.txn_requires_abort()):
            fail(f'the fenced producer got a retriable error: {err}')
        log('fenced:', err.name())
    newer.begin_transaction()
    send_offsets(newer, c, [30, 40])
    newer.commit_transaction(TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while committed(c) != [30, 40]:
        if time.monotonic() > deadline:
            fail(f'committed offsets {committed(c)}, expected [30, 40]')
        time.sleep(0.1)
    c.close()
    peek.close()
    log('transactions: ok')


if __name__ == '__main__':
    main(sys.argv[1])
