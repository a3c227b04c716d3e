"""confluent-kafka's AdminClient against a running `quiver server` (run by tests/kafka_clients.rs).

Usage: admin.py BOOTSTRAP

Walks a topic through its life (create with configs, describe, alter, incremental alter, add
partitions, delete records, delete) checking list_topics and describe_configs after each step,
then checks that bad requests fail with the Kafka error code a client expects. Every wait is
bounded.
"""

import sys
import time
import warnings

from confluent_kafka import (Consumer, KafkaError, KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewPartitions, NewTopic)

TIMEOUT_S = 30
TOPIC = 'admin-orders'
LIST_CONFIGS = {'cleanup.policy'}


def result(future):
    return future.result(timeout=TIMEOUT_S)


def only(futures):
    """The result of a one-entry admin call."""
    assert len(futures) == 1, futures
    return result(next(iter(futures.values())))


def partitions(admin, topic):
    """Partition count of `topic` in a fresh metadata response, or None if it is not listed."""
    md = admin.list_topics(timeout=TIMEOUT_S)
    t = md.topics.get(topic)
    if t is None:
        return None
    assert t.error is None, f'{topic}: {t.error}'
    return len(t.partitions)


def wait_partitions(admin, topic, want):
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got = partitions(admin, topic)
        if got == want:
            return
        assert time.monotonic() < deadline, f'list_topics shows {topic} with {got} partitions, want {want}'
        time.sleep(0.1)


def configs(admin, topic):
    """{name: ConfigEntry} of a topic."""
    res = only(admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)],
                                      request_timeout=TIMEOUT_S))
    return dict(res)


def expect_config(admin, topic, want):
    """`want` maps names to (value, source); source None means 'a default' of any kind."""
    got = configs(admin, topic)
    for name, (value, source) in want.items():
        assert name in got, f'describe_configs of {topic} has no {name}: {sorted(got)}'
        entry = got[name]
        if name in LIST_CONFIGS:
            # A set of values: the broker may keep them in any order.
            same = sorted(entry.value.split(',')) == sorted(value.split(','))
        else:
            same = entry.value == value
        assert same, f'{name} = {entry.value!r}, want {value!r}'
        if source is None:
            assert entry.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, \
                f'{name} should be a default, source {entry.source}'
            assert entry.is_default or entry.source == ConfigSource.DEFAULT_CONFIG.value or \
                entry.source == ConfigSource.STATIC_BROKER_CONFIG.value, (name, entry.source)
        else:
            assert entry.source == source.value, f'{name}: source {entry.source}, want {source}'


def alter_configs(admin, resource):
    with warnings.catch_warnings():  # deprecated in favour of incremental_alter_configs
        warnings.simplefilter('ignore', DeprecationWarning)
        return only(admin.alter_configs([resource], request_timeout=TIMEOUT_S))


def expect_error(what, code, call):
    try:
        call()
    except KafkaException as e:
        err = e.args[0]
        assert err.code() == code, f'{what}: got {err.name()} ({err.code()}): {err.str()}, want {code}'
        print(f'{what}: {err.name()}: {err.str()}')
        return
    raise AssertionError(f'{what}: no error')


def lifecycle(admin, bootstrap):
    # Create with configs.
    only(admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1,
                                       config={'retention.ms': '3600000',
                                               'cleanup.policy': 'compact'})],
                             operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S))
    wait_partitions(admin, TOPIC, 3)
    dynamic = ConfigSource.DYNAMIC_TOPIC_CONFIG
    expect_config(admin, TOPIC, {'retention.ms': ('3600000', dynamic),
                                 'cleanup.policy': ('compact', dynamic),
                                 'segment.bytes': ('1073741824', None)})
    print('create_topics with configs: ok')

    # AlterConfigs replaces every override: cleanup.policy goes back to its default.
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, set_config={'retention.ms': '7200000'})
    alter_configs(admin, res)
    expect_config(admin, TOPIC, {'retention.ms': ('7200000', dynamic),
                                 'cleanup.policy': ('delete', None)})
    print('alter_configs: ok')

    # IncrementalAlterConfigs changes only what it names.
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, incremental_configs=[
        ConfigEntry('segment.ms', '600000', incremental_operation=AlterConfigOpType.SET),
        ConfigEntry('retention.ms', None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry('cleanup.policy', 'compact', incremental_operation=AlterConfigOpType.APPEND),
    ])
    only(admin.incremental_alter_configs([res], request_timeout=TIMEOUT_S))
    expect_config(admin, TOPIC, {'segment.ms': ('600000', dynamic),
                                 'retention.ms': ('604800000', None),
                                 'cleanup.policy': ('delete,compact', dynamic)})
    print('incremental_alter_configs: ok')

    # More partitions.
    only(admin.create_partitions([NewPartitions(TOPIC, 5)], operation_timeout=TIMEOUT_S,
                                 request_timeout=TIMEOUT_S))
    wait_partitions(admin, TOPIC, 5)
    print('create_partitions: ok')

    # Records in the new partition 4, then delete the first 6 of them.
    p = Producer({'bootstrap.servers': bootstrap, 'acks': 'all'})
    for i in range(10):
        p.produce(TOPIC, key=b'k', value=f'v{i}'.encode(), partition=4)
    assert p.flush(TIMEOUT_S) == 0, 'records not delivered'
    deleted = only(admin.delete_records([TopicPartition(TOPIC, 4, 6)],
                                        request_timeout=TIMEOUT_S, operation_timeout=TIMEOUT_S))
    assert deleted.low_watermark == 6, f'delete_records low watermark {deleted.low_watermark}'
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': 'admin-watermarks',
                  'auto.offset.reset': 'earliest'})
    marks = c.get_watermark_offsets(TopicPartition(TOPIC, 4), timeout=TIMEOUT_S, cached=False)
    assert marks == (6, 10), f'watermarks after delete_records: {marks}'
    c.assign([TopicPartition(TOPIC, 4, 0)])
    first = None
    deadline = time.monotonic() + TIMEOUT_S
    while first is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            first = m
    c.close()
    assert first is not None, 'nothing consumed after delete_records'
    # Offset 0 is gone: the fetch is out of range and the consumer resets to the new log start.
    assert (first.offset(), first.value()) == (6, b'v6'), (first.offset(), first.value())
    print('delete_records: ok')

    # Delete.
    only(admin.delete_topics([TOPIC], operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S))
    wait_partitions(admin, TOPIC, None)
    print('delete_topics: ok')


def errors(admin):
    codes = KafkaError
    expect_error('create an invalid name', codes.TOPIC_EXCEPTION, lambda: only(admin.create_topics(
        [NewTopic('bad name!', num_partitions=1, replication_factor=1)],
        request_timeout=TIMEOUT_S)))
    expect_error('create with an unknown config', codes.INVALID_CONFIG,
                 lambda: only(admin.create_topics(
                     [NewTopic('admin-unknown-config', num_partitions=1, replication_factor=1,
                               config={'retention.msx': '1'})], request_timeout=TIMEOUT_S)))
    expect_error('create with a bad config value', codes.INVALID_CONFIG,
                 lambda: only(admin.create_topics(
                     [NewTopic('admin-bad-value', num_partitions=1, replication_factor=1,
                               config={'retention.ms': 'soon'})], request_timeout=TIMEOUT_S)))
    expect_error('create with 0 partitions', codes.INVALID_PARTITIONS,
                 lambda: only(admin.create_topics(
                     [NewTopic('admin-zero', num_partitions=0, replication_factor=1)],
                     request_timeout=TIMEOUT_S)))
    assert partitions(admin, 'admin-unknown-config') is None, 'a refused topic was created'
    assert partitions(admin, 'admin-bad-value') is None, 'a refused topic was created'

    only(admin.create_topics([NewTopic('admin-errors', num_partitions=2, replication_factor=1)],
                             request_timeout=TIMEOUT_S))
    wait_partitions(admin, 'admin-errors', 2)
    expect_error('create an existing topic', codes.TOPIC_ALREADY_EXISTS,
                 lambda: only(admin.create_topics(
                     [NewTopic('admin-errors', num_partitions=1, replication_factor=1)],
                     request_timeout=TIMEOUT_S)))
    expect_error('alter an unknown config', codes.INVALID_CONFIG,
                 lambda: only(admin.incremental_alter_configs([ConfigResource(
                     ConfigResource.Type.TOPIC, 'admin-errors', incremental_configs=[
                         ConfigEntry('retention.msx', '1',
                                     incremental_operation=AlterConfigOpType.SET)])],
                     request_timeout=TIMEOUT_S)))
    expect_error('alter_configs with an unknown config', codes.INVALID_CONFIG,
                 lambda: alter_configs(admin, ConfigResource(
                     ConfigResource.Type.TOPIC, 'admin-errors',
                     set_config={'no.such.config': '1'})))
    expect_error('fewer partitions', codes.INVALID_PARTITIONS,
                 lambda: only(admin.create_partitions([NewPartitions('admin-errors', 1)],
                                                      request_timeout=TIMEOUT_S)))
    expect_error('describe an unknown topic', codes.UNKNOWN_TOPIC_OR_PART,
                 lambda: configs(admin, 'admin-no-such-topic'))
    expect_error('delete an unknown topic', codes.UNKNOWN_TOPIC_OR_PART,
                 lambda: only(admin.delete_topics(['admin-no-such-topic'],
                                                  request_timeout=TIMEOUT_S)))
    # Nothing of the refused alterations stuck.
    got = configs(admin, 'admin-errors')
    assert got['retention.ms'].value == '604800000', got['retention.ms']
    assert partitions(admin, 'admin-errors') == 2
    print('errors: ok')


def main():
    bootstrap = sys.argv[1]
    admin = AdminClient({'bootstrap.servers': bootstrap})
    lifecycle(admin, bootstrap)
    errors(admin)
    print('admin: ok')


if __name__ == '__main__':
    main()
