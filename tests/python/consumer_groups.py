"""confluent-kafka's idempotent producer and consumer groups against a running `quiver server`
(run by tests/kafka_clients.rs, which restarts the server between the two commands).

Usage: consumer_groups.py produce-and-consume BOOTSTRAP STATE_FILE
       consumer_groups.py resume BOOTSTRAP STATE_FILE

produce-and-consume:
  1. creates `events` with 6 partitions and sends 100,000 keyed records with
     enable.idempotence=true: no delivery error, and exactly 100,000 records in the log;
  2. a group of two members consumes them; a third member joins and one leaves on the way
     (two rebalances); every record is consumed exactly once by the group. That holds because a
     member commits synchronously after each batch it processed and again when partitions are
     revoked, and rebalance callbacks run only inside consume(), never between processing a
     batch and committing it;
  3. checks the committed offsets are the log ends, then sends 300 more records and writes the
     committed offsets and the new values to STATE_FILE.
resume (after the server restarted on the same data directory):
  sends 300 more records, then a new member of the same group gets exactly the 600 records sent
  after the commit: none of the 100,000, none twice.

Every wait is bounded; the script fails with a message saying what differed.
"""

import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = 'events'
GROUP = 'events-group'
PARTITIONS = 6
RECORDS = 100_000
AFTER_EACH = 300
TIMEOUT_S = 60
# Members slow down to this many records per second each, so that the group is still busy when
# the third member joins and when one leaves (the rebalances happen mid-stream).
MEMBER_RATE = 4000


def log(*args):
    print(*args, flush=True)


def consumer_config(name):
    return {
        'group.id': GROUP,
        'client.id': name,
        'enable.auto.commit': False,
        'auto.offset.reset': 'earliest',
        'session.timeout.ms': 6000,
        'heartbeat.interval.ms': 500,
        'max.poll.interval.ms': 60000,
        'enable.partition.eof': False,
    }


def produce(bootstrap, records):
    """Sends (key, value) pairs idempotently; returns nothing, fails on any delivery error."""
    errors = []
    delivered = [0]

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += 1

    p = Producer({'bootstrap.servers': bootstrap, 'enable.idempotence': True, 'linger.ms': 5,
                  'client.id': 'events-producer'})
    for key, value in records:
        while True:
            try:
                p.produce(TOPIC, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(TIMEOUT_S)
    assert left == 0, f'{left} records not delivered within {TIMEOUT_S}s'
    assert not errors, f'{len(errors)} delivery errors, first: {errors[0]}'
    assert delivered[0] == len(records), f'delivered {delivered[0]} of {len(records)}'


def watermarks(bootstrap):
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': GROUP + '-watermarks'})
    marks = {p: c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=TIMEOUT_S, cached=False)
             for p in range(PARTITIONS)}
    c.close()
    return marks


def committed(bootstrap):
    """The group's committed offsets, read without joining the group."""
    c = Consumer({'bootstrap.servers': bootstrap, **consumer_config('offset-reader')})
    got = c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=TIMEOUT_S)
    c.close()
    for tp in got:
        assert tp.error is None, f'committed offset of partition {tp.partition}: {tp.error}'
    return {tp.partition: tp.offset for tp in got}


class Member:
    """One group member consuming on its own thread: process a batch, commit it synchronously."""

    def __init__(self, name, bootstrap, seen, lock):
        self.name = name
        self.seen = seen  # shared: (partition, offset, value, member)
        self.lock = lock
        self.consumed = 0
        self.assignments = []  # each assignment this member was given, in order
        self.errors = []
        self.stopping = threading.Event()
        self.consumer = Consumer({'bootstrap.servers': bootstrap, **consumer_config(name)})
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), f'{self.name} did not stop'

    def current(self):
        return self.assignments[-1] if self.assignments else []

    def _commit(self, why):
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                self.errors.append(f'commit ({why}): {e.args[0]}')

    def _on_assign(self, consumer, partitions):
        self.assignments.append(sorted(tp.partition for tp in partitions))
        log(f'{self.name}: assigned {self.assignments[-1]}')

    def _on_revoke(self, consumer, partitions):
        log(f'{self.name}: revoked {sorted(tp.partition for tp in partitions)}')
        self._commit('on revoke')

    def _run(self):
        try:
            self.consumer.subscribe([TOPIC], on_assign=self._on_assign, on_revoke=self._on_revoke)
            while not self.stopping.is_set():
                batch = []
                for m in self.consumer.consume(num_messages=500, timeout=0.2):
                    if m.error() is not None:
                        self.errors.append(f'consume: {m.error()}')
                    else:
                        batch.append(m)
                if not batch:
                    continue
                with self.lock:
                    self.seen.extend((m.partition(), m.offset(), m.value(), self.name)
                                     for m in batch)
                    self.consumed += len(batch)
                self._commit('after a batch')
                time.sleep(len(batch) / MEMBER_RATE)
            self.consumer.close()  # revokes (committing in on_revoke) and leaves the group
        except Exception as e:  # reported by the main thread
            self.errors.append(f'{type(e).__name__}: {e}')


def wait_for(what, condition, members, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        for m in members:
            assert not m.errors, f'{m.name}: {m.errors[:5]}'
        assert time.monotonic() < deadline, \
            f'timed out waiting for {what}; ' + ', '.join(
                f'{m.name} consumed {m.consumed}, assignments {m.assignments}' for m in members)
        time.sleep(0.05)


def produce_and_consume(bootstrap, state_file):
    admin = AdminClient({'bootstrap.servers': bootstrap})
    fs = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                             operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)
    fs[TOPIC].result(timeout=TIMEOUT_S)

    # 1. The idempotent producer.
    t0 = time.monotonic()
    produce(bootstrap, [(f'k{i}'.encode(), str(i).encode()) for i in range(RECORDS)])
    marks = watermarks(bootstrap)
    log(f'produced {RECORDS} in {time.monotonic() - t0:.1f}s; watermarks {marks}')
    assert all(lo == 0 for lo, _ in marks.values()), marks
    assert sum(hi for _, hi in marks.values()) == RECORDS, f'log holds {marks}, sent {RECORDS}'
    assert all(hi > 0 for _, hi in marks.values()), f'a partition got nothing: {marks}'

    # 2. The group: a and b, then c joins, then a leaves.
    seen, lock = [], threading.Lock()
    a, b, c = (Member(n, bootstrap, seen, lock) for n in ('member-a', 'member-b', 'member-c'))
    members = [a, b, c]

    def total():
        with lock:
            return len(seen)

    a.start()
    b.start()
    wait_for('a and b to share the partitions',
             lambda: a.consumed > 0 and b.consumed > 0 and total() >= 15_000, members)
    log(f'a and b consuming ({total()} records so far); c joins')
    c.start()
    wait_for('c to get records', lambda: c.consumed > 0, members)
    log(f'c consuming ({total()} records so far); a leaves')
    assert total() < RECORDS, 'the group consumed everything before a could leave mid-stream; ' \
        'lower MEMBER_RATE'
    a.stop()
    left_at = total()
    wait_for('b and c to take over all partitions',
             lambda: sorted(b.current() + c.current()) == list(range(PARTITIONS)), members)
    wait_for('every record', lambda: total() >= RECORDS, members, timeout=180)
    time.sleep(2)  # a redelivery would show up now
    b.stop()
    c.stop()
    for m in members:
        assert not m.errors, f'{m.name}: {m.errors[:5]}'
    log('consumed: ' + ', '.join(f'{m.name} {m.consumed} in {len(m.assignments)} assignments'
                                 for m in members) + f'; a left at {left_at}')

    # Exactly once per group overall.
    counts = {}
    for p, o, _, who in seen:
        counts.setdefault((p, o), []).append(who)
    twice = {k: v for k, v in counts.items() if len(v) > 1}
    assert not twice, f'{len(twice)} records consumed more than once, e.g. ' \
        f'{sorted(twice.items())[:10]}'
    want = {(p, o) for p, (_, hi) in marks.items() for o in range(hi)}
    missing = want - counts.keys()
    assert not missing, f'{len(missing)} records never consumed, e.g. {sorted(missing)[:10]}'
    assert len(seen) == RECORDS, len(seen)
    assert sorted(int(v) for _, _, v, _ in seen) == list(range(RECORDS)), 'values differ'
    assert all(m.consumed > 0 for m in members), [m.consumed for m in members]
    assert len(a.assignments) >= 2 and len(b.assignments) >= 2, \
        f'a and b should have been reassigned when c joined: {a.assignments} {b.assignments}'
    after_leave = sum(1 for s in seen[left_at:] if s[3] != 'member-a')
    assert after_leave > 0, 'nothing consumed after a left'

    # 3. The commits are the log ends; then more records after the commit.
    offsets = committed(bootstrap)
    ends = {p: hi for p, (_, hi) in marks.items()}
    assert offsets == ends, f'committed {offsets}, log ends {ends}'
    after = [f'after-commit-{i}' for i in range(AFTER_EACH)]
    produce(bootstrap, [(f'k{i}'.encode(), v.encode()) for i, v in enumerate(after)])
    with open(state_file, 'w') as f:
        json.dump({'committed': offsets, 'after': after}, f)
    log('produce-and-consume: ok')


def resume(bootstrap, state_file):
    with open(state_file) as f:
        state = json.load(f)
    before = {int(p): o for p, o in state['committed'].items()}
    offsets = committed(bootstrap)
    assert offsets == before, f'committed offsets after the restart {offsets}, before {before}'

    after = state['after'] + [f'after-restart-{i}' for i in range(AFTER_EACH)]
    produce(bootstrap, [(f'r{i}'.encode(), f'after-restart-{i}'.encode())
                        for i in range(AFTER_EACH)])

    c = Consumer({'bootstrap.servers': bootstrap, **consumer_config('member-d')})
    c.subscribe([TOPIC])
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    quiet_until = None
    while time.monotonic() < deadline:
        for m in c.consume(num_messages=500, timeout=0.2):
            assert m.error() is None, m.error()
            got.append((m.partition(), m.offset(), m.value().decode()))
        if len(got) >= len(after):
            # Wait a little longer: anything more would be a record consumed twice.
            quiet_until = quiet_until or time.monotonic() + 2
            if time.monotonic() > quiet_until:
                break
    c.commit(asynchronous=False)
    c.close()
    values = [v for _, _, v in got]
    assert sorted(values) == sorted(after), \
        f'got {len(values)} records, want the {len(after)} sent after the commit; ' \
        f'unexpected: {sorted(set(values) - set(after))[:10]}, ' \
        f'missing: {sorted(set(after) - set(values))[:10]}'
    for p in range(PARTITIONS):
        offs = [o for q, o, _ in got if q == p]
        assert offs == list(range(before[p], before[p] + len(offs))), \
            f'partition {p}: offsets {offs[:5]}..., committed {before[p]}'
    log(f'resume: {len(got)} records, all produced after the commit: ok')


def main():
    cmd, bootstrap, state_file = sys.argv[1:4]
    if cmd == 'produce-and-consume':
        produce_and_consume(bootstrap, state_file)
    elif cmd == 'resume':
        resume(bootstrap, state_file)
    else:
        sys.exit(f'unknown command {cmd!r}')


if __name__ == '__main__':
    main()
