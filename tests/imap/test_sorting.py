"""RFC 5256 base subject extraction and threading, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mailstack.imap import sorting


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Hello", "HELLO", False),
    ("Re: Hello", "HELLO", True),
    ("RE: re: Fwd: hello", "HELLO", True),
    ("Fw: hello (fwd) (FWD)  ", "HELLO", True),
    ("[list] Re: hello", "HELLO", True),
    ("Re [2]: hello", "HELLO", True),
    ("[list] hello", "HELLO", False),
    ("[only a blob]", "[ONLY A BLOB]", False),
    ("[Fwd: Re: topic]", "TOPIC", True),
    ("[fwd: [list] topic] (fwd)", "TOPIC", True),
    ("Re:Re:  spaced\t\tout ", "SPACED OUT", True),
    ("=?utf-8?q?Re=3A_gr=C3=BC=C3=9Fe?=", "GRüßE", True),
    ("Reply to this", "REPLY TO THIS", False),
    ("", "", False),
])
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert sorting.base_subject(subject) == (base, reply)


def test_base_subject_is_linear_on_hostile_input() -> None:
    evil = "[" * 5000 + "re:" * 5000 + "]" * 5000
    assert sorting.base_subject(evil)[0] is not None


def _k(uid: int, subject: str, date: float, mid: str = "", refs: tuple[str, ...] = ()
       ) -> sorting.SortKeys:
    base, reply = sorting.base_subject(subject)
    return sorting.SortKeys(uid=uid, seq=uid, arrival=date, size=10, date=date,
                            subject=base, is_reply=reply, from_="", to="", cc="",
                            display_from="", display_to="", message_id=mid,
                            references=refs)


def test_references_threads_and_subject_grouping() -> None:
    msgs = [_k(1, "Topic", 1, "<a>"), _k(2, "Re: Topic", 2, "<b>", ("<a>",)),
            _k(3, "Re: Topic", 3, "<c>", ("<a>", "<b>")), _k(4, "Re: Topic", 4, "<d>",
                                                             ("<a>",)),
            _k(5, "Other", 5, "<e>"), _k(6, "Re: Other", 6, "<f>"),
            _k(7, "Lonely", 7, "<g>", ("<missing1>", "<missing2>")),
            _k(8, "Dup", 8, "<a>")]  # duplicate Message-ID: a thread of its own
    roots = sorting.references(msgs)
    number = {m.uid: m.uid for m in msgs}
    assert sorting.render(roots, number) == "(1 (2 3)(4))(5 6)(7)(8)"


def test_references_dummy_root_with_two_children() -> None:
    msgs = [_k(1, "A", 1, "<x>", ("<gone>",)), _k(2, "B", 2, "<y>", ("<gone>",))]
    roots = sorting.references(msgs)
    assert sorting.render(roots, {1: 1, 2: 2}) == "((1)(2))"


def test_references_loop_is_ignored() -> None:
    msgs = [_k(1, "A", 1, "<a>", ("<b>",)), _k(2, "B", 2, "<b>", ("<a>",))]
    out = sorting.render(sorting.references(msgs), {1: 1, 2: 2})
    assert sorted(out.replace("(", " ").replace(")", " ").split()) == ["1", "2"]


def test_ordered_subject() -> None:
    msgs = [_k(1, "Topic", 1), _k(2, "Re: Topic", 2), _k(3, "Other", 3),
            _k(4, "Re: topic", 4), _k(5, "Re: Other", 5), _k(6, "Third", 0)]
    roots = sorting.ordered_subject(msgs)
    assert sorting.render(roots, {m.uid: m.uid for m in msgs}) == "(6)(1 (2)(4))(3 5)"


def test_sort_criteria_and_ties() -> None:
    msgs = [_k(1, "b", 3), _k(2, "a", 3), _k(3, "B", 1)]
    assert [m.uid for m in sorting.sort(msgs, (("SUBJECT", False),))] == [2, 1, 3]
    assert [m.uid for m in sorting.sort(msgs, (("DATE", False), ("SUBJECT", True)))] == \
        [3, 1, 2]
    assert [m.uid for m in sorting.sort(msgs, (("SIZE", True),))] == [1, 2, 3]


def test_references_deep_chain_is_bounded() -> None:
    n = 3000  # a linear chain of replies, each referencing all before it (capped)
    msgs = [_k(i, "Chain", i, f"<{i}>", tuple(f"<{j}>" for j in range(max(1, i - 200), i)))
            for i in range(1, n + 1)]
    roots = sorting.references(msgs)
    out = sorting.render(roots, {m.uid: m.uid for m in msgs})
    assert sorted(int(x) for x in out.replace("(", " ").replace(")", " ").split()) == \
        list(range(1, n + 1))
    depth = 0
    node = roots[0]
    while node.children:
        node = node.children[0]
        depth += 1
    assert depth <= sorting.MAX_DEPTH + 1


def test_references_many_equal_subject_pairs_is_fast() -> None:
    msgs = [_k(i, f"Invoice {i // 2}", i, f"<{i}>") for i in range(1, 20001)]
    roots = sorting.references(msgs)
    assert len(roots) == 10001  # 10,000 pairs under dummies, and message 20000 alone
    assert sorting.render(roots[:1], {m.uid: m.uid for m in msgs}) == "(1)"


@pytest.mark.parametrize("seed", range(40))
def test_references_fast_path_equals_the_full_algorithm(seed: int) -> None:
    """Messages that nobody references and that reference nothing skip steps 1-4; the
    threads are exactly those of every message through every step (duplicate and
    missing Message-IDs, shared subjects, replies, dummies, loops included)."""
    import random

    rnd = random.Random(seed)
    n = rnd.randint(1, 60)
    ids = [f"<{i}@x>" for i in range(n + 10)]
    subjects = ["", "a", "b", "c", "Re: a", "Fwd: b", "d", "e"] + [f"u{i}" for i in range(n)]
    msgs = []
    for uid in range(1, n + 1):
        refs = tuple(rnd.choice(ids) for _ in range(rnd.choice([0, 0, 0, 1, 2, 3])))
        mid = rnd.choice(["", rnd.choice(ids), ids[uid], ids[uid]])
        subj = rnd.choice(subjects)
        msgs.append(_k(uid, subj, float(rnd.randint(1, 20)), mid, refs))
    number = {m.uid: m.uid for m in msgs}
    assert sorting.render(sorting.references(msgs), number) == \
        sorting.render(sorting.references_all(msgs), number)


async def test_header_keys_of_a_big_header_are_parsed_in_a_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys stored at delivery: only the header block is parsed; a big (hostile)
    header goes to a thread, with the same result as inline; an unusable Date gives
    None (the store puts the internal date there)."""
    from mailstack import headerkeys

    small = (b"Subject: Re: [x] Hi\r\nFrom: A <a@x.org>\r\nDate: bogus\r\n"
             b"References: <1@x>\r\n <2@x>\r\n\r\nFrom: body@x.org\r\n")
    keys = await headerkeys.header_keys_async(small)
    assert keys == headerkeys.header_keys(small[:headerkeys.header_end(small)])
    assert (keys.date, keys.subject, keys.reply, keys.from_, keys.references) == \
        (None, "HI", True, "A", "<1@x> <2@x>")
    big = b"X-Pad: " + b"y" * (headerkeys.INLINE_LIMIT + 10) + b"\r\n" + small
    threads: list[int] = []
    real = asyncio.to_thread

    async def to_thread(fn: Any, *args: Any) -> Any:
        threads.append(len(args[0]))
        return await real(fn, *args)

    monkeypatch.setattr(headerkeys.asyncio, "to_thread", to_thread)
    assert await headerkeys.header_keys_async(big) == keys
    assert threads == [len(big) - len(b"From: body@x.org\r\n")]
    assert await headerkeys.header_keys_async(small) == keys
    assert len(threads) == 1
    assert headerkeys.header_end(b"\r\nbody") == 2
    assert headerkeys.header_end(b"Subject: no body") == len(b"Subject: no body")
