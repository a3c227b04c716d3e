"""A transaction for `quiver transactions` to list and describe, made by confluent-kafka's
transactional producer against a running `quiver server`.

Usage: txn_admin.py BOOTSTRAP TRANSACTIONAL_ID commit|open

Starts TRANSACTIONAL_ID (transaction.timeout.ms 60000) and, in one transaction, commits offset
5 of `txn-admin-input` partition 0 for group `txn-admin` (AddOffsetsToTxn, TxnOffsetCommit);
then `commit` commits it, and `open` exits at once, leaving it open as a crashed application
would (the coordinator aborts it after the timeout). The topic must exist. Prints
"TRANSACTIONAL_ID committed" or "TRANSACTIONAL_ID open".

Every wait is bounded; the script fails with a message saying what went wrong.
"""

import os
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

TOPIC = 'txn-admin-input'
GROUP = 'txn-admin'
TIMEOUT_S = 60


def main(bootstrap, transactional_id, end):
    if end not in ('commit', 'open'):
        print(f'FAIL: unknown ending {end!r}; use commit or open', flush=True)
        sys.exit(2)
    p = Producer({
        'bootstrap.servers': bootstrap,
        'transactional.id': transactional_id,
        'transaction.timeout.ms': 60000,
    })
    p.init_transactions(TIMEOUT_S)
    p.begin_transaction()
    c = Consumer({'bootstrap.servers': bootstrap, 'group.id': GROUP,
                  'enable.auto.commit': False})
    p.send_offsets_to_transaction([TopicPartition(TOPIC, 0, 5)], c.consumer_group_metadata(),
                                  TIMEOUT_S)
    if end == 'commit':
        p.commit_transaction(TIMEOUT_S)
        print(f'{transactional_id} committed', flush=True)
        c.close()
        return
    print(f'{transactional_id} open', flush=True)
    # No destructor runs, so nothing ends the transaction.
    os._exit(0)


if __name__ == '__main__':
    main(*sys.argv[1:])
