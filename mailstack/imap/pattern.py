"""LIST / LSUB mailbox patterns (RFC 9051 §6.3.9, RFC 3501 §6.3.8): ``*`` matches any
characters, ``%`` any but the hierarchy delimiter "/". No I/O.

Implementation notes (invariants):
- Matching is a bit-parallel NFA (shift-and): one state bit per pattern token, a few
  integer operations per name character, no backtracking. Time is linear in the name
  length for any pattern (a backtracking regular expression is exponential in the number
  of wildcards: ``*a*a*a*ab`` over a 255-character name stalls a server for seconds,
  docs/behaviour.md §12).
- Patterns longer than ``MAX_PATTERN`` characters are refused before any matching.
- ``INBOX`` at the start of the pattern (alone or followed by "/") matches
  case-insensitively (RFC 9051 §5.1), as stored names spell it "INBOX".
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PATTERN = 1024  # characters of reference + pattern
MAX_PATTERNS = 32  # patterns in one LIST-EXTENDED command (RFC 5258 §3)


class PatternTooLong(ValueError):
    pass


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern: ``masks`` maps a character to the state bits it advances."""

    masks: dict[str, int]
    star: int  # bits of "*" tokens (self loop on any character)
    percent: int  # bits of "%" tokens (self loop on any character but "/")
    accept: int  # the bit of the final state
    start: int  # the initial state set (after the epsilon closure)
    text: str

    def _close(self, d: int) -> int:
        # consecutive wildcards are merged at compile time, so one step suffices
        return d | ((d & (self.star | self.percent)) << 1)

    def match(self, name: str) -> bool:
        d = self.start
        masks, star, percent = self.masks, self.star, self.percent
        for ch in name:
            d = ((d & masks.get(ch, 0)) << 1) | (d & star) | (d & percent if ch != "/" else 0)
            if not d:
                return False
            d |= (d & (star | percent)) << 1
        return bool(d & self.accept)


def full_pattern(reference: str, pattern: str) -> str:
    """RFC 9051 §6.3.9: the reference is prepended unless the pattern is absolute."""
    return reference + pattern if not pattern.startswith("/") or not reference else pattern


def compile_pattern(reference: str, pattern: str) -> Pattern:
    full = full_pattern(reference, pattern)
    if len(full) > MAX_PATTERN:
        raise PatternTooLong(f"pattern longer than {MAX_PATTERN} characters")
    tokens: list[str] = []
    for ch in full:
        if ch in "*%" and tokens and tokens[-1] in "*%":
            tokens[-1] = "*" if "*" in (ch, tokens[-1]) else "%"  # "*%" == "%*" == "*"
            continue
        tokens.append(ch)
    inbox = full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] == "/")
    masks: dict[str, int] = {}
    star = percent = 0
    for i, tok in enumerate(tokens):
        bit = 1 << i
        if tok == "*":
            star |= bit
        elif tok == "%":
            percent |= bit
        else:
            chars = {tok, tok.upper(), tok.lower()} if inbox and i < 5 else {tok}
            for c in chars:
                masks[c] = masks.get(c, 0) | bit
    p = Pattern(masks, star, percent, 1 << len(tokens), 1, full)
    return Pattern(masks, star, percent, 1 << len(tokens), p._close(1), full)
