"""SORT and THREAD (RFC 5256, RFC 5957 SORT=DISPLAY): sort keys of a message, base
subject extraction, and the ORDEREDSUBJECT and REFERENCES threading algorithms. No I/O.

Implementation notes (invariants):
- Keys are parsed from the message's header block when it is stored
  (``mailstack.headerkeys``) and kept with it (``mailstack.store.sortkeys``), so a
  SORT is an ORDER BY; strings
  compare with i;ascii-casemap (ASCII letters folded to upper case, RFC 5256 §2.2 /
  RFC 4790 §9.2); the final tie-breaker is always the message sequence number
  (RFC 5256 §3: "ties ... are broken by the order of the messages in the mailbox").
- The base subject follows RFC 5256 §2.1 step by step (``mailstack.headerkeys``).
- A Date that cannot be parsed counts as the internal date (RFC 5256 §2.2, §3).
- REFERENCES threads nest at most ``MAX_DEPTH`` deep and use the last
  ``MAX_REFERENCES`` ids of a References field: hostile chains cannot make threading
  quadratic in the mailbox size or exhaust the recursion limit.
- Threads are rendered per the RFC 5256 §4 grammar: a single child continues the chain
  ("1 2 3"), several children are nested lists ("1 (2)(3)").
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import NamedTuple

from mailstack import mime
from mailstack.headerkeys import (
    MAX_REFERENCES,
    MAX_SUBJECT,
    base_subject,
    casemap,
    decode_words,
    first_mailbox,
    message_ids,
    sent_date,
)

__all__ = ["MAX_REFERENCES", "MAX_SUBJECT", "SortKeys", "base_subject", "casemap",
           "decode_words", "keys_from_header", "ordered_subject", "references", "render",
           "sort"]

MAX_DEPTH = 256  # thread nesting (REFERENCES)
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                       "DISPLAYFROM", "DISPLAYTO"})


class SortKeys(NamedTuple):
    """What SORT and THREAD need of one message (RFC 5256 §3). A named tuple: THREAD
    builds one per message of the mailbox, 100,000s per command."""

    uid: int
    seq: int
    arrival: float
    size: int
    date: float  # sent date (UTC seconds); the internal date when Date is unusable
    subject: str  # base subject, case-folded (i;ascii-casemap)
    is_reply: bool  # the subject had a reply/forward marker (RFC 5256 §2.1)
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str = ""
    references: tuple[str, ...] = ()


def keys_from_header(uid: int, seq: int, arrival: float, size: int, header: bytes
                     ) -> SortKeys:
    """The keys of one message from its header block (``mailstack.headerkeys``); an
    unusable Date counts as ``arrival`` (RFC 5256 §2.2)."""
    f = mime.first_fields(header)
    subject, reply = base_subject(f.get("subject", ""))
    frm, dfrm = first_mailbox(f.get("from"))
    to, dto = first_mailbox(f.get("to"))
    cc, _ = first_mailbox(f.get("cc"))
    mid, refs = message_ids(f)
    date = sent_date(f.get("date"))
    return SortKeys(uid=uid, seq=seq, arrival=arrival, size=size,
                    date=arrival if date is None else date, subject=subject,
                    is_reply=reply, from_=frm, to=to, cc=cc, display_from=dfrm,
                    display_to=dto, message_id=mid, references=refs)


def _key(name: str, k: SortKeys) -> float | str:
    if name == "ARRIVAL":
        return k.arrival
    if name == "DATE":
        return k.date
    if name == "SIZE":
        return float(k.size)
    attr = {"CC": "cc", "FROM": "from_", "SUBJECT": "subject", "TO": "to",
            "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to"}[name]
    value: str = getattr(k, attr)
    return value


def sort(msgs: list[SortKeys], criteria: tuple[tuple[str, bool], ...]) -> list[SortKeys]:
    """RFC 5256 §3: by each (key, reverse) in turn, then by sequence number."""
    out = sorted(msgs, key=lambda k: k.seq)
    for name, reverse in reversed(criteria):  # stable sorts, least significant first
        out.sort(key=partial(_key, name), reverse=reverse)
    return out


# --------------------------------------------------------------------------- threads


class Node:
    """A message in a thread tree, or a dummy for a referenced message that is not in
    the mailbox (RFC 5256 §4). Plain slots: THREAD builds one per message."""

    __slots__ = ("children", "key", "msg", "parent")

    def __init__(self, msg: SortKeys | None = None, parent: Node | None = None) -> None:
        self.msg = msg
        self.parent = parent
        self.children: list[Node] = []
        self.key = (0.0, 0)  # (sent date, seq) as sorted by _sort_tree

    def date(self) -> tuple[float, int]:
        if self.msg is not None:
            return self.msg.date, self.msg.seq
        return self.children[0].date() if self.children else (0.0, 0)

    def subject_msg(self) -> SortKeys | None:
        return self.msg if self.msg is not None else (
            self.children[0].msg if self.children else None)


def ordered_subject(msgs: list[SortKeys]) -> list[Node]:
    """THREAD=ORDEREDSUBJECT (RFC 5256 §4): by base subject, then sent date; the first
    message of a subject is the parent of all others; threads ordered by the sent date
    of their first message."""
    roots: list[Node] = []
    by_subject: dict[str, Node] = {}
    for k in sorted(msgs, key=lambda k: (k.subject, k.date, k.seq)):
        root = by_subject.get(k.subject)
        if root is None:
            by_subject[k.subject] = root = Node(k)
            roots.append(root)
        else:
            root.children.append(Node(k, root))
    roots.sort(key=Node.date)
    return roots


def _is_ancestor(a: Node, b: Node) -> bool:
    """True if ``a`` is ``b`` or one of its ancestors. Also True when ``b`` is deeper than
    ``MAX_DEPTH``: linking under it is refused, so threads never nest deeper than that
    (a hostile chain of replies costs O(n * MAX_DEPTH), and the recursive steps stay
    far from Python's recursion limit)."""
    n: Node | None = b
    for _ in range(MAX_DEPTH):
        if n is None:
            return False
        if n is a:
            return True
        n = n.parent
    return n is not None


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def references(msgs: list[SortKeys]) -> list[Node | SortKeys]:
    """THREAD=REFERENCES (RFC 5256 §4, the algorithm of Jamie Zawinski).

    A message without references whose Message-ID nobody references can only ever be
    a thread of its own, unless step 5 merges it by subject: such messages skip steps
    1-4 (no node, no table entry) and get a node only when another thread shares their
    base subject. The result is the same as :func:`references_all` (tested), in a
    fraction of the time on a mailbox of mostly unrelated messages; a root that is
    a bare ``SortKeys`` is a one-message thread."""
    referenced: set[str] = set()
    for k in msgs:
        if k.references:
            referenced.update(k.references)
    alone: list[SortKeys] = []
    linked: list[SortKeys] = []
    for k in msgs:
        if not k.references and (not k.message_id or k.message_id not in referenced):
            alone.append(k)
        else:
            linked.append(k)
    roots = _link_and_sort(linked)  # steps 1-4
    count: dict[str, int] = {}
    for r in roots:
        m = r.subject_msg()
        if m is not None and m.subject:
            count[m.subject] = count.get(m.subject, 0) + 1
    for k in alone:
        if k.subject:
            count[k.subject] = count.get(k.subject, 0) + 1

    def shared(k: SortKeys | None) -> bool:
        return k is not None and count.get(k.subject, 0) > 1

    grouped = [r for r in roots if shared(r.subject_msg())]
    for k in alone:
        if shared(k):
            node = Node(k)
            node.key = (k.date, k.seq)
            grouped.append(node)
    grouped.sort(key=_NODE_KEY)  # the order step 5 sees them in (step 4's)
    nodes = [r for r in roots if not shared(r.subject_msg())] + _group_by_subject(grouped)
    _sort_tree(nodes)  # step 6
    out: list[Node | SortKeys] = [*nodes, *(k for k in alone if not shared(k))]
    out.sort(key=_root_key)
    return out


def _root_key(r: Node | SortKeys) -> tuple[float, int]:
    return r.key if isinstance(r, Node) else (r.date, r.seq)


def references_all(msgs: list[SortKeys]) -> list[Node]:
    """THREAD=REFERENCES with every message through every step (the reference for
    :func:`references`)."""
    roots = _link_and_sort(msgs)
    roots = _group_by_subject(roots)  # step 5
    _sort_tree(roots)  # step 6
    return roots


def _link_and_sort(msgs: list[SortKeys]) -> list[Node]:
    """RFC 5256 §4 REFERENCES steps 1 to 4: link, find the roots, prune, sort."""
    table: dict[str, Node] = {}
    for k in sorted(msgs, key=lambda k: k.seq):
        mid = k.message_id
        node = table.get(mid) if mid else None
        if node is not None and node.msg is None:
            node.msg = k
        else:  # step 1.B: a missing or duplicate Message-ID counts as unique
            node = Node(k)
            table[mid if mid and mid not in table else f"\x00{k.uid}"] = node
        prev: Node | None = None
        for ref in k.references:  # step 1.A
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = Node()
            if prev is not None and ref_node.parent is None and \
                    not _is_ancestor(ref_node, prev):
                _link(prev, ref_node)
            prev = ref_node
        # step 1.C: the message's parent is its last reference
        if prev is not None and not _is_ancestor(node, prev):
            _link(prev, node)
        elif prev is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    roots = [n for n in table.values() if n.parent is None]  # step 2
    roots = _prune(roots, top=True)  # step 3
    for r in roots:
        r.parent = None
    _sort_tree(roots)  # step 4
    return roots


def _prune(nodes: list[Node], top: bool) -> list[Node]:
    out: list[Node] = []
    for n in nodes:
        if n.children:
            n.children = _prune(n.children, top=False)
            for c in n.children:
                c.parent = n
        if n.msg is None:
            if not n.children:
                continue  # an empty dummy
            if not top or len(n.children) == 1:
                out.extend(n.children)  # promote (a root dummy with several stays)
                continue
        out.append(n)
    return out


def _sort_tree(nodes: list[Node]) -> None:
    """Sort every sibling list by sent date, deepest first (a dummy's date is that of
    its first child, RFC 5256 §4 REFERENCES step 4)."""
    levels = [nodes]
    i = 0
    while i < len(levels):
        levels.extend(n.children for n in levels[i] if n.children)
        i += 1
    for level in reversed(levels):  # children before their parents
        for n in level:
            m = n.msg
            n.key = (m.date, m.seq) if m is not None else (
                n.children[0].key if n.children else (0.0, 0))
        if len(level) > 1:
            level.sort(key=_NODE_KEY)


_NODE_KEY = attrgetter("key")


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """RFC 5256 §4 REFERENCES step 5: merge threads whose base subjects match."""
    table: dict[str, Node] = {}
    for r in roots:
        k = r.subject_msg()
        if k is None or not k.subject:
            continue
        old = table.get(k.subject)
        old_k = old.subject_msg() if old is not None else None
        if old is None or (r.msg is None and old.msg is not None) or (
                old_k is not None and old_k.is_reply and not k.is_reply and
                old.msg is not None and r.msg is not None):
            table[k.subject] = r
    out: list[Node] = []
    at: dict[int, int] = {}  # id(node) -> its index in ``out`` (no list scans)
    for r in roots:
        if r.parent is not None:
            continue  # already merged into a new dummy
        k = r.subject_msg()
        target = table.get(k.subject) if k is not None and k.subject else None
        if target is None or target is r:
            at[id(r)] = len(out)
            out.append(r)
            continue
        if target.msg is None and r.msg is None:
            for c in list(r.children):
                _link(target, c)
        elif target.msg is None:
            _link(target, r)
        elif r.msg is not None and r.msg.is_reply and target.msg is not None and \
                not target.msg.is_reply:
            _link(target, r)
        else:
            dummy = Node()
            i = at.pop(id(target), -1)
            _link(dummy, target)
            _link(dummy, r)
            assert k is not None
            table[k.subject] = dummy
            if i >= 0:
                out[i] = dummy
            else:
                i = len(out)
                out.append(dummy)
            at[id(dummy)] = i
    for r in out:
        r.parent = None
    return out


def render(roots: Sequence[Node | SortKeys], number: dict[int, int]) -> str:
    """RFC 5256 §4 thread-list: ``number`` maps a UID to what the client sees."""
    return "".join("(" + (_render(r, number) if isinstance(r, Node) else
                          str(number[r.uid])) + ")" for r in roots)


def _render(node: Node, number: dict[int, int]) -> str:
    parts: list[str] = []
    cur = node
    while True:
        if cur.msg is not None:
            parts.append(str(number[cur.msg.uid]))
        if len(cur.children) == 1:
            cur = cur.children[0]
            continue
        if cur.children:
            parts.append("".join("(" + _render(c, number) + ")" for c in cur.children))
        break
    return " ".join(parts)
