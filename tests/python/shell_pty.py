"""Drives `quiver shell` at a pseudo-terminal as a user types: a statement over two lines, a push
query cancelled with Ctrl-C (the shell goes on), Ctrl-C on a half-typed line, a table, Ctrl-D.

    shell_pty.py QUIVER DATA_DIR

Prints everything the shell wrote; exits non-zero, with what was seen, when an expected
output does not come within a minute."""

import os
import pty
import select
import sys
import time

quiver, data_dir = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(quiver, [quiver, "shell", "--data-dir", data_dir])

seen = b""


def expect(marker):
    """Wait for MARKER and consume the output up to its end, so that text which came in the
    same read as an earlier marker still counts for the next one."""
    global seen
    end = time.time() + 60
    while time.time() < end:
        at = seen.find(marker)
        if at >= 0:
            seen = seen[at + len(marker):]
            return
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            seen += data
    sys.stdout.write(seen.decode(errors="replace"))
    sys.exit(f"never saw {marker!r}")


def mark():
    """Forget what was seen so far: the next expect looks at new output only."""
    global seen
    seen = b""


expect(b"quiver> ")
os.write(fd, b"CREATE STREAM s (k STRING KEY, v BIGINT)\r")
expect(b"-> ")
os.write(fd, b"  WITH (KAFKA_TOPIC='s', VALUE_FORMAT='JSON', PARTITIONS=1);\r")
expect(b"Stream 's' created over topic 's'")
mark()
os.write(fd, b"SELECT k, v FROM s EMIT CHANGES;\r")
expect(b"k | v")
time.sleep(1)
os.write(fd, b"\x03")
expect(b"(cancelled after 0 rows)")
expect(b"quiver> ")
mark()
# Ctrl-C on a half-typed statement drops it, not the shell.
os.write(fd, b"SELECT nothing_yet\r")
expect(b"-> ")
os.write(fd, b"\x03")
expect(b"quiver> ")
mark()
os.write(fd, b"SHOW STREAMS;\r")
expect(b"(1 row)")
expect(b"quiver> ")
os.write(fd, b"\x04")
_, status = os.waitpid(pid, 0)
if status != 0:
    sys.exit(f"the shell exited with status {status}")
