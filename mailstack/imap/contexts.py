"""Live SEARCH and SORT results (RFC 5267 §4, CONTEXT=SEARCH and CONTEXT=SORT).

A ``SEARCH``/``SORT ... RETURN (UPDATE)`` keeps its result alive in the selected mailbox
(``MailboxView.contexts``, keyed by the command's tag): whenever the mailbox changes
(new mail, EXPUNGE, flag changes, by this session or any other), the session tells the
client how the result changed with unsolicited ``* ESEARCH (TAG "t") [UID] REMOVEFROM
(...) ADDTO (...)`` (RFC 5267 §4.3), until ``CANCELUPDATE "t"`` or the mailbox is left.

Implementation notes (invariants):
- A context remembers its result as UIDs, in result order (ascending for SEARCH, sort
  order for SORT). After a change the search (and sort) runs again over the view and
  the two results are compared: one query per context and change, never per message.
- Positions (RFC 5267 §4.3): SEARCH results are unordered, so the position is always 0
  and one REMOVEFROM / ADDTO carries the whole set. SORT results are ordered: each
  message gets its own item with its 1-based position, removals in descending position
  (each one valid against the result as the client holds it), then additions in
  ascending position of the new result, so applying the items in order yields it.
- Message-number contexts: REMOVEFROM goes out BEFORE the EXPUNGE responses of the same
  flush (the numbers are still those the client knows), ADDTO AFTER the EXISTS
  (numbers of the new messages). Own EXPUNGE / MOVE report removals before their
  EXPUNGE responses through :func:`removing`.
- At most ``MAX_CONTEXTS`` per mailbox; a further UPDATE is answered
  ``* NO [NOUPDATE "tag"]`` and the command still returns its result (RFC 5267 §4.3.1).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from mailstack.imap import respond
from mailstack.imap import search as k
from mailstack.imap import types as t
from mailstack.imap.mailbox_view import MailboxView
from mailstack.imap.session import Session

MAX_CONTEXTS = 16


@dataclass
class LiveContext:
    tag: str
    uid: bool  # UID SEARCH / UID SORT: the updates carry UIDs
    key: k.SearchKey
    criteria: tuple[tuple[str, bool], ...] | None  # None: a SEARCH (unordered)
    members: list[int]  # UIDs, in result order


def check_tag(s: Session, tag: str) -> None:
    """A context's tag must be unique in the mailbox (it names the updates)."""
    view = s.require_view()
    if tag in view.contexts:
        raise respond.Bad(f'a live result with tag "{tag}" exists already')


def start(s: Session, tag: str, uid: bool, key: k.SearchKey,
          criteria: tuple[tuple[str, bool], ...] | None, members: list[int]) -> None:
    """Keep a result alive (after its ESEARCH response went out)."""
    view = s.require_view()
    if len(view.contexts) >= MAX_CONTEXTS:  # RFC 5267 §4.3.1
        s.send(respond.untagged(f'NO [NOUPDATE "{_quote(tag)}"] Too many live results'))
        return
    view.contexts[tag] = LiveContext(tag, uid, key, criteria, list(members))


async def cancelupdate(s: Session, c: t.CancelUpdate) -> str | None:
    """RFC 5267 §4.3.5: CANCELUPDATE stops the named contexts; an unknown tag is a NO and
    cancels nothing."""
    view = s.require_view()
    unknown = [tag for tag in c.tags if tag not in view.contexts]
    if unknown:
        raise respond.No(f'No live result with tag "{unknown[0]}"')
    for tag in c.tags:
        del view.contexts[tag]
    return "Updates cancelled"


def _quote(tag: str) -> str:
    return tag.replace("\\", "\\\\").replace('"', '\\"')


def _number(ctx: LiveContext, numbering: list[int], uid: int) -> int:
    if ctx.uid:
        return uid
    i = bisect.bisect_left(numbering, uid)
    return i + 1 if i < len(numbering) and numbering[i] == uid else 0


def _line(ctx: LiveContext, items: list[str]) -> bytes:
    head = f'ESEARCH (TAG "{_quote(ctx.tag)}")' + (" UID" if ctx.uid else "")
    return respond.untagged(head + " " + " ".join(items))


def _removals(ctx: LiveContext, gone: set[int], numbering: list[int]) -> list[str]:
    """REMOVEFROM items for the members in ``gone`` (numbers as in ``numbering``); the
    members are updated."""
    if not gone:
        return []
    hits = [(i + 1, u) for i, u in enumerate(ctx.members) if u in gone]
    ctx.members = [u for u in ctx.members if u not in gone]
    if not hits:
        return []
    if ctx.criteria is None:
        nums = [n for _, u in hits if (n := _number(ctx, numbering, u))]
        return [f"REMOVEFROM (0 {respond.seq_set(nums)})"] if nums else []
    return [f"REMOVEFROM ({pos} {_number(ctx, numbering, u)})" for pos, u in reversed(hits)]


def _additions(ctx: LiveContext, new: list[int], numbering: list[int]) -> list[str]:
    have = set(ctx.members)
    hits = [(i + 1, u) for i, u in enumerate(new) if u not in have]
    ctx.members = list(new)
    if not hits:
        return []
    if ctx.criteria is None:
        nums = [n for _, u in hits if (n := _number(ctx, numbering, u))]
        return [f"ADDTO (0 {respond.seq_set(nums)})"] if nums else []
    return [f"ADDTO ({pos} {_number(ctx, numbering, u)})" for pos, u in hits]


def removing(view: MailboxView, uids: list[int]) -> list[bytes]:
    """REMOVEFROM responses for messages this session is about to report expunged
    (call before their EXPUNGE responses)."""
    gone = set(uids)
    out = []
    for ctx in view.contexts.values():
        items = _removals(ctx, gone, view.uids)
        if items:
            out.append(_line(ctx, items))
    return out


async def _result(s: Session, ctx: LiveContext) -> list[int]:
    from mailstack.imap.search_exec import evaluate
    from mailstack.imap.sort_exec import ordered_uids

    if ctx.criteria is None:
        return [u for u, _ in await evaluate(s, ctx.key)]
    return await ordered_uids(s, ctx.key, ctx.criteria)


async def flush_view(s: Session, view: MailboxView, *, allow_expunge: bool,
                     force: bool = False) -> list[bytes]:
    """``view.flush`` plus the updates of the live results: REMOVEFROM before the
    mailbox's own responses, ADDTO after them. ``force``: the session itself may have
    changed the results (its own STORE is not among the pending changes)."""
    if not view.contexts:
        return await view.flush(allow_expunge=allow_expunge)
    view.drain()
    changed = force or view.has_pending
    before = list(view.uids)
    lines = await view.flush(allow_expunge=allow_expunge)
    if not changed:
        return lines
    pre: list[bytes] = []
    post: list[bytes] = []
    for ctx in list(view.contexts.values()):
        new = await _result(s, ctx)
        gone = set(ctx.members) - set(new)
        removed = _removals(ctx, gone, before)
        if removed:
            pre.append(_line(ctx, removed))
        added = _additions(ctx, new, view.uids)
        if added:
            post.append(_line(ctx, added))
    return pre + lines + post
