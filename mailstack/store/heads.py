"""Header blocks of message files, kept in memory by blob id.

Why (bench/README.md "Header blocks in memory"): SEARCH on header fields and FETCH of
a few header fields read the head of every message file again each time (an open, a
read and a close per message, and a thread hop for more than a few). Dovecot keeps
such fields in its cache file for the same reason.

Implementation notes (invariants):
- A blob id is the SHA-256 of the file's bytes (blobs.py): the head of a blob never
  changes, so a kept head is never stale and needs no invalidation; a blob removed and
  stored again has the same bytes.
- What is kept is the file's own header block: its bytes up to and including the first
  blank line (or the whole file when it has none), at most ``MAX_HEAD`` bytes (longer
  heads are not kept). With a per-copy prefix in front, prefix + head holds the whole
  header of the message (the prefix's lines come first), which is all a header-only
  read promises (store/imap.py ``read_messages``).
- At most ``MAX_BYTES`` in all; least recently used heads go first.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

MAX_HEAD = 64 * 1024
MAX_BYTES = 16 * 1024 * 1024
_CHUNK = 16 * 1024
_BLANK = re.compile(rb"\n\r?\n")


def read_head(path: Path) -> bytes:
    """The header block of a file: up to and including its first blank line (a file
    starting with a line end has an empty header), or the whole file."""
    buf = bytearray()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return bytes(buf)
            start = max(0, len(buf) - 2)
            buf += chunk
            if buf[:2] == b"\r\n":
                return bytes(buf[:2])
            if buf[:1] == b"\n":
                return bytes(buf[:1])
            m = _BLANK.search(buf, start)
            if m is not None:
                return bytes(buf[:m.end()])


class HeadCache:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._heads: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, blob_id: str) -> bytes | None:
        head = self._heads.get(blob_id)
        if head is not None:
            self._heads.move_to_end(blob_id)
        return head

    def put(self, blob_id: str, head: bytes) -> None:
        if len(head) > MAX_HEAD or blob_id in self._heads:
            return
        self._heads[blob_id] = head
        self._bytes += len(head)
        while self._bytes > self.max_bytes:
            _, old = self._heads.popitem(last=False)
            self._bytes -= len(old)
