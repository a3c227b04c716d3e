"""Kafka transactions against a running `quiver server` with real clients (run by
tests/transactions.rs; group-offsets by tests/kafka_clients.rs).

Usage: transactions.py group-offsets BOOTSTRAP
       transactions.py confluent BOOTSTRAP
       transactions.py kafka-python BOOTSTRAP
       transactions.py fencing BOOTSTRAP
       transactions.py abandon BOOTSTRAP
       transactions.py after-abandon BOOTSTRAP
       transactions.py ctp-input BOOTSTRAP N
       transactions.py ctp-app BOOTSTRAP TRANSACTIONAL_ID
       transactions.py ctp-verify BOOTSTRAP N

group-offsets: the transaction coordinator and group offsets alone (no records), with
  confluent-kafka:
  1. creates `txn-input` with 2 partitions; a transactional producer commits offsets 10 and 20
     for group `txn-group` in a transaction: a consumer of the group sees them only afterwards
     (a read_uncommitted one gets the old offsets meanwhile; a read_committed one would wait,
     as its OffsetFetch requires stable offsets);
  2. a second transaction commits 99 and 98 and is aborted: the group still has 10 and 20;
  3. a second producer with the same transactional.id fences the first: the first one's next
     transaction fails with a fatal (fenced) error, the new one commits 30 and 40.
confluent: confluent-kafka's transactional producer: transactions across two topics and five
  partitions with send_offsets_to_transaction, committed and aborted, and one left open while
  consumers read. A read_committed consumer sees exactly the committed records, in the order
  sent, and nothing of the open one; a read_uncommitted consumer sees everything written, with
  one offset per partition taken by each transaction marker. The group's offsets are the ones of
  committed transactions only.
kafka-python: the same with kafka-python's KafkaProducer(transactional_id=...), and its
  fencing: a second instance fences the first, whose next send and commit fail.
fencing: a second producer with the same transactional.id fences the first: the first's
  next send and commit fail with a fencing error, and nothing it sent is visible, not even to
  read_uncommitted once fenced.
abandon: begins a transaction with transaction.timeout.ms=2000, sends, and kills itself with
  SIGKILL without ending it. after-abandon (run right after): another producer commits records
  to the same partition; a read_committed consumer gets them once the coordinator has aborted
  the abandoned transaction (the last stable offset moves on), never the abandoned records; the
  abandoned transactional id can be used again.
ctp-input: creates the consume-transform-produce topics and writes N input records.
ctp-app: the consume-transform-produce application: reads the input with read_committed in a
  group, writes each record transformed to the output and the consumed offsets in one
  transaction per batch, and exits 0 ("done") once the group's offsets reach the input's end.
  Prints "open K" when a transaction's records are sent and flushed but not yet committed, and
  "committed K" after each commit. Meant to be killed (SIGKILL) at any point and started again.
ctp-verify: the output read with read_committed holds each input record's result exactly once,
  in input order per key, and the group's offsets are the input's end.

Every wait is bounded (a stuck call dumps the stacks and exits); the script fails with a message
saying what differed.
"""

import faulthandler
import os
import signal
import sys
import time

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 60
# Longest one subcommand may run before it dumps every thread's stack and exits.
SCRIPT_BUDGET_S = 200

# The consume-transform-produce topics and group.
CTP_INPUT = 'ctp-input'
CTP_INPUT_PARTITIONS = 4
CTP_OUTPUT = 'ctp-output'
CTP_OUTPUT_PARTITIONS = 3
CTP_GROUP = 'ctp-app'
CTP_KEYS = 16
# Records per transaction, and how long a transaction stays open after its records are flushed:
# small enough batches that the application is killed many times before it is done, a pause
# long enough that some kills land inside a transaction.
CTP_MAX_BATCH = 25
CTP_PAUSE_S = 0.03

FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def log(*args):
    print(*args, flush=True)


def create_topics(bootstrap, partitions):
    admin = AdminClient({'bootstrap.servers': bootstrap})
    fs = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1)
                              for t, n in partitions.items()],
                             operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
    for topic, f in fs.items():
        f.result(timeout=TIMEOUT_S)


def plain_produce(bootstrap, records):
    """Sends (topic, partition, key, value) idempotently, outside any transaction."""
    errors = []
    p = Producer({'bootstrap.servers': bootstrap, 'enable.idempotence': True, 'linger.ms': 5})
    for topic, partition, key, value in records:
        p.produce(topic, key=key, value=value, partition=partition,
                  on_delivery=lambda err, _msg: err is not None and errors.append(err))
        p.poll(0)
    left = p.flush(TIMEOUT_S)
    assert left == 0, f'{left} records not delivered within {TIMEOUT_S}s'
    assert not errors, f'delivery errors: {errors[:5]}'


def read(bootstrap, partitions, isolation, want, settle_s=0.5):
    """Reads `partitions` ([(topic, partition)]) from the beginning with `isolation`
    ('read_committed' or 'read_uncommitted') until at least `want` records came and every
    partition is at its end; then `settle_s` more, so that an extra record would show.

    Returns {(topic, partition): [(offset, value)]} with values decoded."""
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': f'reader-{isolation}',
                  'enable.auto.commit': False, 'isolation.level': isolation,
                  'enable.partition.eof': True, 'fetch.wait.max.ms': 50})
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])
    got = {tp: [] for tp in partitions}
    at_end = set()
    count = 0
    deadline = time.monotonic() + TIMEOUT_S
    settle_until = None
    while True:
        now = time.monotonic()
        if count >= want and len(at_end) == len(partitions):
            settle_until = settle_until or now + settle_s
            if now >= settle_until:
                break
        assert now < deadline, \
            f'{isolation}: got {count} records of {want} within {TIMEOUT_S}s, ' \
            f'at the end of {sorted(at_end)}: {got}'
        for m in c.consume(num_messages=1000, timeout=0.1):
            tp = (m.topic(), m.partition())
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                at_end.add(tp)
                continue
            at_end.discard(tp)
            got[tp].append((m.offset(), m.value().decode()))
            count += 1
    c.close()
    return got


def values(got):
    return {tp: [v for _, v in records] for tp, records in got.items()}


def committed_offsets(bootstrap, group, partitions):
    """The group's committed offsets, read as a read_committed consumer does (OffsetFetch with
    require_stable: pending transactional offsets are waited for, not skipped)."""
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': group,
                  'enable.auto.commit': False, 'isolation.level': 'read_committed'})
    got = c.committed([TopicPartition(t, p) for t, p in partitions], timeout=TIMEOUT_S)
    c.close()
    for tp in got:
        assert tp.error is None, f'committed offset of {tp.topic}/{tp.partition}: {tp.error}'
    return {(tp.topic, tp.partition): tp.offset for tp in got}


def expect_layout(got, batches):
    """Checks the offsets read_uncommitted returned: each transaction's records of a partition
    are dense, and its marker takes the one offset after them. `batches` is the number of
    records per transaction in every partition."""
    for tp, records in got.items():
        offsets = [o for o, _ in records]
        want, next_offset = [], 0
        for n in batches:
            want.extend(range(next_offset, next_offset + n))
            next_offset += n + 1  # the transaction's marker
        assert offsets == want, f'{tp}: offsets {offsets}, want {want} (one per marker)'


# ---------------------------------------------------------------------------------------------
# Group offsets in transactions
# ---------------------------------------------------------------------------------------------

OFFSETS_TOPIC = 'txn-input'
OFFSETS_GROUP = 'txn-group'
OFFSETS_TXN_ID = 'txn-script'


def fail(msg):
    log('FAIL:', msg)
    sys.exit(1)


def offsets_producer(bootstrap):
    p = Producer({
        'bootstrap.servers': bootstrap,
        'transactional.id': OFFSETS_TXN_ID,
        'transaction.timeout.ms': 30000,
    })
    p.init_transactions(TIMEOUT_S)
    return p


def offsets_consumer(bootstrap, isolation='read_committed'):
    return Consumer({
        'bootstrap.servers': bootstrap,
        'group.id': OFFSETS_GROUP,
        'enable.auto.commit': False,
        'isolation.level': isolation,
    })


def offsets_committed(c):
    parts = c.committed([TopicPartition(OFFSETS_TOPIC, 0), TopicPartition(OFFSETS_TOPIC, 1)],
                        timeout=TIMEOUT_S)
    return [tp.offset for tp in parts]


def send_offsets(p, c, offsets):
    tps = [TopicPartition(OFFSETS_TOPIC, i, o) for i, o in enumerate(offsets)]
    p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), TIMEOUT_S)


def group_offsets(bootstrap):
    admin = AdminClient({'bootstrap.servers': bootstrap})
    for f in admin.create_topics([NewTopic(OFFSETS_TOPIC, num_partitions=2)]).values():
        f.result(TIMEOUT_S)

    c = offsets_consumer(bootstrap)
    peek = offsets_consumer(bootstrap, 'read_uncommitted')
    p = offsets_producer(bootstrap)
    before = offsets_committed(c)
    if any(o >= 0 for o in before):
        fail(f'fresh group has offsets {before}')

    p.begin_transaction()
    send_offsets(p, c, [10, 20])
    if offsets_committed(peek) != before:
        fail(f'offsets {offsets_committed(peek)} visible before the commit')
    p.commit_transaction(TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while offsets_committed(c) != [10, 20]:
        if time.monotonic() > deadline:
            fail(f'committed offsets {offsets_committed(c)}, expected [10, 20]')
        time.sleep(0.1)
    log('commit: ok')

    p.begin_transaction()
    send_offsets(p, c, [99, 98])
    p.abort_transaction(TIMEOUT_S)
    if offsets_committed(c) != [10, 20]:
        fail(f'after an abort the offsets are {offsets_committed(c)}, expected [10, 20]')
    log('abort: ok')

    newer = offsets_producer(bootstrap)
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
    while offsets_committed(c) != [30, 40]:
        if time.monotonic() > deadline:
            fail(f'committed offsets {offsets_committed(c)}, expected [30, 40]')
        time.sleep(0.1)
    c.close()
    peek.close()
    log('transactions: ok')


# ---------------------------------------------------------------------------------------------
# confluent-kafka
# ---------------------------------------------------------------------------------------------

ORDERS = [('orders', p) for p in range(3)] + [('audit', p) for p in range(2)]


def batch(tag, per_partition=4):
    """The records one transaction writes: `per_partition` to each partition of ORDERS."""
    return {tp: [f'{tag}|{tp[0]}|{tp[1]}|{j}' for j in range(per_partition)] for tp in ORDERS}


def confluent(bootstrap):
    create_topics(bootstrap, {'orders': 3, 'audit': 2, 'source': 1})
    source = [('source', 0)]
    group = 'orders-app'
    # A consumer of the group, for its metadata; it reads nothing here.
    member = Consumer({'bootstrap.servers': bootstrap, 'group.id': group,
                       'enable.auto.commit': False, 'isolation.level': 'read_committed'})
    p = Producer({'bootstrap.servers': bootstrap, 'transactional.id': 'orders-txn',
                  'linger.ms': 5})
    p.init_transactions(TIMEOUT_S)

    def run(tag, source_offset, end):
        records = batch(tag)
        p.begin_transaction()
        for (topic, partition), vs in records.items():
            for v in vs:
                p.produce(topic, value=v.encode(), partition=partition)
        # Every record reaches the log before the transaction ends (an abort would otherwise
        # drop the ones still queued in the client, and read_uncommitted would not see them).
        assert p.flush(TIMEOUT_S) == 0
        p.send_offsets_to_transaction([TopicPartition('source', 0, source_offset)],
                                      member.consumer_group_metadata(), TIMEOUT_S)
        if end == 'commit':
            p.commit_transaction(TIMEOUT_S)
        else:
            p.abort_transaction(TIMEOUT_S)
        return records

    def join(*batches):
        return {tp: [v for b in batches for v in b[tp]] for tp in ORDERS}

    c1 = run('c1', 10, 'commit')
    assert committed_offsets(bootstrap, group, source) == {('source', 0): 10}
    a2 = run('a2', 20, 'abort')
    assert committed_offsets(bootstrap, group, source) == {('source', 0): 10}, \
        'the offsets of an aborted transaction were applied'
    c3 = run('c3', 30, 'commit')
    assert committed_offsets(bootstrap, group, source) == {('source', 0): 30}
    log('commit, abort, commit: offsets ok')

    # A transaction left open while the consumers read: its records are sent and acknowledged.
    o4 = batch('o4')
    p.begin_transaction()
    for (topic, partition), vs in o4.items():
        for v in vs:
            p.produce(topic, value=v.encode(), partition=partition)
    assert p.flush(TIMEOUT_S) == 0

    n = len(ORDERS) * 4
    rc = read(bootstrap, ORDERS, 'read_committed', 2 * n)
    assert values(rc) == join(c1, c3), f'read_committed with a transaction open: {values(rc)}'
    ru = read(bootstrap, ORDERS, 'read_uncommitted', 4 * n)
    assert values(ru) == join(c1, a2, c3, o4), f'read_uncommitted: {values(ru)}'
    # Each ended transaction left one marker per partition; the open one none yet.
    expect_layout(ru, [4, 4, 4, 4])
    log('open transaction: read_committed stops before it, read_uncommitted sees it: ok')

    p.commit_transaction(TIMEOUT_S)
    rc = read(bootstrap, ORDERS, 'read_committed', 3 * n)
    assert values(rc) == join(c1, c3, o4), f'read_committed after the commit: {values(rc)}'
    for tp, records in rc.items():
        offsets = [o for o, _ in records]
        assert offsets == sorted(set(offsets)), f'{tp}: offsets out of order {offsets}'
    member.close()
    log('confluent transactions: ok')


# ---------------------------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------------------------

def kafka_python(bootstrap):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition
    from kafka.errors import KafkaError as KafkaPythonError
    from kafka.errors import ProducerFencedError
    from kafka.structs import OffsetAndMetadata

    topics = [('kp-events', p) for p in range(2)] + [('kp-log', 0)]
    create_topics(bootstrap, {'kp-events': 2, 'kp-log': 1, 'kp-source': 1})
    group = 'kp-app'
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id='kp-txn',
                      max_block_ms=TIMEOUT_S * 1000, linger_ms=5)
    p.init_transactions()

    def run(tag, source_offset, end):
        records = {tp: [f'{tag}|{tp[0]}|{tp[1]}|{j}' for j in range(3)] for tp in topics}
        p.begin_transaction()
        futures = [p.send(t, value=v.encode(), partition=part)
                   for (t, part), vs in records.items() for v in vs]
        p.flush(timeout=TIMEOUT_S)
        for f in futures:
            f.get(timeout=TIMEOUT_S)
        p.send_offsets_to_transaction(
            {KTopicPartition('kp-source', 0): OffsetAndMetadata(source_offset, '', -1)}, group)
        if end == 'commit':
            p.commit_transaction()
        else:
            p.abort_transaction()
        return records

    c1 = run('c1', 5, 'commit')
    a2 = run('a2', 6, 'abort')
    c3 = run('c3', 7, 'commit')
    p.close(timeout=TIMEOUT_S)

    def consume(isolation, want):
        c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                          enable_auto_commit=False, group_id=None)
        tps = [KTopicPartition(t, part) for t, part in topics]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got = {tp: [] for tp in topics}
        count, deadline, settle_until = 0, time.monotonic() + TIMEOUT_S, None
        while True:
            now = time.monotonic()
            if count >= want:
                settle_until = settle_until or now + 1.0
                if now >= settle_until:
                    break
            assert now < deadline, f'{isolation}: {count} of {want} records: {got}'
            for tp, ms in c.poll(timeout_ms=100).items():
                for m in ms:
                    got[(tp.topic, tp.partition)].append((m.offset, m.value.decode()))
                    count += 1
        c.close()
        return got

    def join(*batches):
        return {tp: [v for b in batches for v in b[tp]] for tp in topics}

    rc = consume('read_committed', 2 * 3 * len(topics))
    assert values(rc) == join(c1, c3), f'read_committed: {values(rc)}'
    ru = consume('read_uncommitted', 3 * 3 * len(topics))
    assert values(ru) == join(c1, a2, c3), f'read_uncommitted: {values(ru)}'
    expect_layout(ru, [3, 3, 3])
    offsets = committed_offsets(bootstrap, group, [('kp-source', 0)])
    assert offsets == {('kp-source', 0): 7}, f'group offsets {offsets}, want 7 (6 was aborted)'

    # Fencing: a second instance with the same transactional_id fences the first, whose next
    # send (to a partition new to its transaction) fails with PRODUCER_FENCED and whose commit
    # fails; nothing it sent is written.
    create_topics(bootstrap, {'kp-fenced': 2})
    fenced = [('kp-fenced', 0), ('kp-fenced', 1)]

    def producer():
        return KafkaProducer(bootstrap_servers=bootstrap, transactional_id='kp-zombie',
                             max_block_ms=TIMEOUT_S * 1000)

    zombie = producer()
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.send('kp-fenced', value=b'zombie-open', partition=0).get(timeout=TIMEOUT_S)
    newer = producer()
    newer.init_transactions()
    late = zombie.send('kp-fenced', value=b'zombie-late', partition=1)
    try:
        late.get(timeout=TIMEOUT_S)
        raise AssertionError('the fenced producer delivered a record')
    except ProducerFencedError:
        pass
    try:
        zombie.commit_transaction()
        raise AssertionError('the fenced producer committed')
    except KafkaPythonError as e:
        log(f'kafka-python zombie commit: {e}')
    newer.begin_transaction()
    newer.send('kp-fenced', value=b'newer', partition=1)
    newer.commit_transaction()
    newer.close(timeout=TIMEOUT_S)
    zombie.close(timeout=TIMEOUT_S)
    rc = values(read(bootstrap, fenced, 'read_committed', 1))
    assert rc == {('kp-fenced', 0): [], ('kp-fenced', 1): ['newer']}, f'read_committed: {rc}'
    ru = values(read(bootstrap, fenced, 'read_uncommitted', 2))
    assert ru == {('kp-fenced', 0): ['zombie-open'], ('kp-fenced', 1): ['newer']}, \
        f'read_uncommitted: {ru}'
    log('kafka-python transactions: ok')


# ---------------------------------------------------------------------------------------------
# Fencing
# ---------------------------------------------------------------------------------------------

def fencing(bootstrap):
    create_topics(bootstrap, {'fenced': 2})
    tps = [('fenced', 0), ('fenced', 1)]
    conf = {'bootstrap.servers': bootstrap, 'transactional.id': 'zombie', 'linger.ms': 5}

    first = Producer({**conf, 'client.id': 'first'})
    first.init_transactions(TIMEOUT_S)
    first.begin_transaction()
    for j in range(3):
        first.produce('fenced', value=f'first-open-{j}'.encode(), partition=0)
    assert first.flush(TIMEOUT_S) == 0

    # The second instance fences the first and aborts its open transaction.
    second = Producer({**conf, 'client.id': 'second'})
    second.init_transactions(TIMEOUT_S)
    log('second producer initialized')

    # The zombie goes on: to the partition it had (its epoch is now stale there) and to a new
    # one (AddPartitionsToTxn with a stale epoch). librdkafka raises the fatal fencing error
    # from flush() once a broker refuses them.
    delivered = []
    for partition in (0, 1):
        first.produce('fenced', value=f'zombie-{partition}'.encode(), partition=partition,
                      on_delivery=lambda err, _msg: err is None and delivered.append(err))
    try:
        first.flush(TIMEOUT_S)
    except KafkaException as e:
        log(f'zombie send refused: {e.args[0]}')
    try:
        first.commit_transaction(TIMEOUT_S)
        raise AssertionError('the fenced producer committed')
    except KafkaException as e:
        err = e.args[0]
        assert err.fatal() and err.code() in FENCED, \
            f'the zombie commit failed with {err} (code {err.code()}), not a fatal fencing error'
        log(f'zombie commit: {err.name()}: {err.str()}')
    assert not delivered, f'the zombie delivered {len(delivered)} records'

    second.begin_transaction()
    for partition in (0, 1):
        second.produce('fenced', value=f'second-{partition}'.encode(), partition=partition)
    second.commit_transaction(TIMEOUT_S)

    rc = values(read(bootstrap, tps, 'read_committed', 2))
    assert rc == {('fenced', 0): ['second-0'], ('fenced', 1): ['second-1']}, \
        f'read_committed: {rc}'
    ru = values(read(bootstrap, tps, 'read_uncommitted', 5))
    assert ru == {('fenced', 0): ['first-open-0', 'first-open-1', 'first-open-2', 'second-0'],
                  ('fenced', 1): ['second-1']}, f'read_uncommitted (no zombie record): {ru}'
    log('fencing: ok')


# ---------------------------------------------------------------------------------------------
# An abandoned transaction
# ---------------------------------------------------------------------------------------------

def abandon(bootstrap):
    create_topics(bootstrap, {'abandoned': 1})
    plain_produce(bootstrap, [('abandoned', 0, None, f'before-{j}'.encode()) for j in range(3)])
    p = Producer({'bootstrap.servers': bootstrap, 'transactional.id': 'abandoned-txn',
                  'transaction.timeout.ms': 2000, 'linger.ms': 5})
    p.init_transactions(TIMEOUT_S)
    p.begin_transaction()
    for j in range(4):
        p.produce('abandoned', value=f'lost-{j}'.encode(), partition=0)
    assert p.flush(TIMEOUT_S) == 0
    log('transaction open; killing myself')
    os.kill(os.getpid(), signal.SIGKILL)


def after_abandon(bootstrap):
    tps = [('abandoned', 0)]
    t0 = time.monotonic()
    q = Producer({'bootstrap.servers': bootstrap, 'transactional.id': 'after-txn',
                  'linger.ms': 5})
    q.init_transactions(TIMEOUT_S)
    q.begin_transaction()
    for j in range(2):
        q.produce('abandoned', value=f'after-{j}'.encode(), partition=0)
    q.commit_transaction(TIMEOUT_S)

    # The committed records lie past the abandoned ones: read_committed gets them only once the
    # coordinator has aborted the abandoned transaction.
    rc = values(read(bootstrap, tps, 'read_committed', 5))
    want = ['before-0', 'before-1', 'before-2', 'after-0', 'after-1']
    assert rc == {('abandoned', 0): want}, f'read_committed: {rc}'
    log(f'read_committed got past the abandoned transaction {time.monotonic() - t0:.1f}s '
        f'after the next commit')
    ru = values(read(bootstrap, tps, 'read_uncommitted', 9))
    assert ru == {('abandoned', 0): want[:3] + [f'lost-{j}' for j in range(4)] + want[3:]}, \
        f'read_uncommitted: {ru}'

    # The abandoned transactional id works again.
    r = Producer({'bootstrap.servers': bootstrap, 'transactional.id': 'abandoned-txn'})
    r.init_transactions(TIMEOUT_S)
    r.begin_transaction()
    r.produce('abandoned', value=b'resumed', partition=0)
    r.commit_transaction(TIMEOUT_S)
    rc = values(read(bootstrap, tps, 'read_committed', 6))
    assert rc == {('abandoned', 0): want + ['resumed']}, f'read_committed: {rc}'
    log('abandoned transaction: ok')


# ---------------------------------------------------------------------------------------------
# Consume-transform-produce
# ---------------------------------------------------------------------------------------------

def transform(value):
    i = int(value)
    return f'{i}:{i * i}'


def ctp_input(bootstrap, n):
    create_topics(bootstrap, {CTP_INPUT: CTP_INPUT_PARTITIONS, CTP_OUTPUT: CTP_OUTPUT_PARTITIONS})
    plain_produce(bootstrap, [(CTP_INPUT, i % CTP_INPUT_PARTITIONS, f'k{i % CTP_KEYS}'.encode(),
                               str(i).encode()) for i in range(n)])
    log(f'ctp-input: {n} records')


def input_ends(bootstrap):
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': 'ctp-watermarks'})
    ends = {p: c.get_watermark_offsets(TopicPartition(CTP_INPUT, p), timeout=TIMEOUT_S,
                                       cached=False)[1]
            for p in range(CTP_INPUT_PARTITIONS)}
    c.close()
    return ends


def ctp_app(bootstrap, transactional_id):
    ends = input_ends(bootstrap)
    # Without 'metadata.recovery.strategy': 'none', librdkafka 2.16 re-bootstraps when its only
    # broker goes away and can then wait forever in send_offsets_to_transaction() for the group
    # coordinator it decommissioned (librdkafka issue 5511); the broker restart here would
    # trip it.
    consumer = Consumer({'bootstrap.servers': bootstrap, 'group.id': CTP_GROUP,
                         # A restarted instance takes its predecessor's place at once.
                         'group.instance.id': f'{transactional_id}-member',
                         'enable.auto.commit': False, 'auto.offset.reset': 'earliest',
                         'isolation.level': 'read_committed', 'session.timeout.ms': 6000,
                         'fetch.wait.max.ms': 50, 'metadata.recovery.strategy': 'none'})
    producer = Producer({'bootstrap.servers': bootstrap, 'transactional.id': transactional_id,
                         'transaction.timeout.ms': 10000, 'linger.ms': 5,
                         'metadata.recovery.strategy': 'none'})
    retrying(lambda: producer.init_transactions(TIMEOUT_S), 'init_transactions')
    consumer.subscribe([CTP_INPUT])
    producer.begin_transaction()
    k = 0
    while True:
        msgs = consumer.consume(num_messages=CTP_MAX_BATCH, timeout=0.2)
        for m in msgs:
            if m.error() is not None:
                raise KafkaException(m.error())
        if not msgs:
            if at_end(consumer, ends):
                break
            continue
        try:
            for m in msgs:
                producer.produce(CTP_OUTPUT, key=m.key(), value=transform(m.value()).encode())
            left = producer.flush(TIMEOUT_S)
            log(f'open {k} {len(msgs)} left={left}')
            time.sleep(CTP_PAUSE_S)
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
            retrying(lambda: producer.send_offsets_to_transaction(
                positions, consumer.consumer_group_metadata(), TIMEOUT_S),
                'send_offsets_to_transaction')
            retrying(lambda: producer.commit_transaction(TIMEOUT_S), 'commit_transaction')
            log(f'committed {k} ' + ' '.join(f'{tp.partition}:{tp.offset}' for tp in positions))
        except KafkaException as e:
            err = e.args[0]
            if not err.txn_requires_abort():
                raise
            log(f'abort {k}: {err}')
            retrying(lambda: producer.abort_transaction(TIMEOUT_S), 'abort_transaction')
            rewind(consumer)
        k += 1
        producer.begin_transaction()
    producer.abort_transaction(TIMEOUT_S)  # the empty one just begun
    consumer.close()
    log(f'done after {k} transactions')


def retrying(call, what):
    """Calls `call` again while it fails with a retriable error (the broker restarting)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            return call()
        except KafkaException as e:
            err = e.args[0]
            if not err.retriable() or time.monotonic() > deadline:
                raise
            log(f'{what}: retrying after {err}')
            time.sleep(0.1)


def rewind(consumer):
    """Back to the group's committed offsets, after an abort (the aborted batch is read again)."""
    assignment = consumer.assignment()
    for tp in consumer.committed(assignment, timeout=TIMEOUT_S):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def at_end(consumer, ends):
    """True when the group's committed offsets are the input's end in every partition."""
    tps = [TopicPartition(CTP_INPUT, p) for p in range(CTP_INPUT_PARTITIONS)]
    got = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=TIMEOUT_S)}
    return got == ends


def ctp_verify(bootstrap, n):
    tps = [(CTP_OUTPUT, p) for p in range(CTP_OUTPUT_PARTITIONS)]
    rc = read(bootstrap, tps, 'read_committed', n, settle_s=1.0)
    results = [v for records in rc.values() for _, v in records]
    counts = {}
    for v in results:
        counts[v] = counts.get(v, 0) + 1
    twice = sorted((v for v, c in counts.items() if c > 1), key=lambda v: int(v.split(':')[0]))
    assert not twice, f'{len(twice)} results more than once, e.g. {twice[:10]}'
    want = {transform(i) for i in range(n)}
    missing = sorted(want - counts.keys(), key=lambda v: int(v.split(':')[0]))
    assert not missing, f'{len(missing)} results missing, e.g. {missing[:10]}'
    unexpected = sorted(counts.keys() - want)
    assert not unexpected, f'unexpected results {unexpected[:10]}'
    # Each key's records are in one input partition and one output partition: their results
    # come out in input order.
    for tp, records in rc.items():
        by_key = {}
        for _, v in records:
            i = int(v.split(':')[0])
            by_key.setdefault(i % CTP_KEYS, []).append(i)
        for key, seq in by_key.items():
            assert seq == sorted(seq), f'{tp}: key k{key} out of input order: {seq[:20]}'
    ends = input_ends(bootstrap)
    offsets = committed_offsets(bootstrap, CTP_GROUP,
                                [(CTP_INPUT, p) for p in range(CTP_INPUT_PARTITIONS)])
    assert offsets == {(CTP_INPUT, p): e for p, e in ends.items()}, \
        f'group offsets {offsets}, input ends {ends}'
    ru = read(bootstrap, tps, 'read_uncommitted', n)
    aborted = sum(len(r) for r in ru.values()) - len(results)
    log(f'ctp-verify: {n} results exactly once; {aborted} more in aborted transactions')


def main():
    faulthandler.dump_traceback_later(SCRIPT_BUDGET_S, exit=True)
    cmd, bootstrap, *rest = sys.argv[1:]
    if cmd == 'group-offsets':
        group_offsets(bootstrap)
    elif cmd == 'confluent':
        confluent(bootstrap)
    elif cmd == 'kafka-python':
        kafka_python(bootstrap)
    elif cmd == 'fencing':
        fencing(bootstrap)
    elif cmd == 'abandon':
        abandon(bootstrap)
    elif cmd == 'after-abandon':
        after_abandon(bootstrap)
    elif cmd == 'ctp-input':
        ctp_input(bootstrap, int(rest[0]))
    elif cmd == 'ctp-app':
        ctp_app(bootstrap, rest[0])
    elif cmd == 'ctp-verify':
        ctp_verify(bootstrap, int(rest[0]))
    else:
        sys.exit(f'unknown command {cmd!r}')


if __name__ == '__main__':
    main()
