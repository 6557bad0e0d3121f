"""DKIM (RFC 6376, RFC 8463 Ed25519) and ARC (RFC 8617) verification with dkimpy.

Invariants:
- DNS first, crypto second: the key records every signature and ARC set names
  (``<s>._domainkey.<d>`` TXT) are fetched concurrently through ``Lookups`` (the
  injected resolver, the per-message budget); then dkimpy verifies in a worker thread
  (hashing a big body is CPU work) with a ``dnsfunc`` that only reads those fetched
  answers, so dkimpy never opens a socket or waits on DNS.
- Every DKIM-Signature is verified and reported (RFC 6376 §6.1: each on its own).
- A key that failed to load for a DNS failure gives ``temperror`` (RFC 8601 §2.7.1),
  never ``fail``; no key record, or a signature or key dkimpy cannot parse, gives
  ``permerror``; a signature that does not verify gives ``fail``.
- RSA keys under 1024 bits fail (RFC 8301 §3.2; dkimpy's ``minkey``).
- A signature with ``l=`` (body length limit, RFC 6376 §8.2) that verifies is reported
  as ``policy``: unsigned content may follow the signed part, so it does not count
  for DMARC.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .lookups import Answer, Lookups

DkimResult = Literal["pass", "fail", "neutral", "policy", "temperror", "permerror"]
ArcResult = Literal["none", "pass", "fail"]
MIN_KEY_BITS = 1024  # RFC 8301 §3.2
MAX_SIGNATURES = 10  # more are reported as neutral, unverified (a cost bound)
MAX_KEY_NAMES = 20  # distinct key records fetched per message (signatures + ARC sets)

log = logging.getLogger("mailstack.policy.dkim")
_quiet = logging.getLogger("mailstack.policy.dkim.lib")
_quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class DkimSignature:
    result: DkimResult
    domain: str  # d=
    selector: str  # s=
    b_prefix: str  # first characters of b= (RFC 8601 §2.7.1 header.b)
    algorithm: str = ""
    reason: str = ""
    identity: str = ""  # i=

    @property
    def counts_for_dmarc(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True)
class ArcOutcome:
    result: ArcResult
    instance: int = 0  # i= of the newest ARC set
    sealer: str = ""  # d= of the newest ARC-Seal
    reason: str = ""


def split_header(message: bytes) -> list[tuple[str, bytes]]:
    """(name, raw value with folding) of each header field, in order."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end + 2]
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            raw_name, _, value = line.partition(b":")
            fields.append((raw_name.decode("ascii", "replace").strip(), value))
    return fields


def has_signatures(message: bytes) -> bool:
    return any(n.lower() in ("dkim-signature", "arc-seal", "arc-message-signature")
               for n, _ in split_header(message))


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return {}


def key_names(message: bytes) -> list[str]:
    """The key record names DKIM-Signature, ARC-Message-Signature and ARC-Seal name
    (at most ``MAX_KEY_NAMES``; a key not fetched verifies nothing)."""
    names = []
    count = 0
    for name, value in split_header(message):
        lname = name.lower()
        if lname not in ("dkim-signature", "arc-message-signature", "arc-seal"):
            continue
        if lname == "dkim-signature":
            count += 1
            if count > MAX_SIGNATURES:
                continue
        tags = _tags(value)
        s, d = tags.get(b"s"), tags.get(b"d")
        if s and d:
            names.append(_key_name(s, d))
    return list(dict.fromkeys(names))[:MAX_KEY_NAMES]


def _key_name(selector: bytes, domain: bytes) -> str:
    return (selector + b"._domainkey." + domain).decode("ascii", "replace").rstrip(".").lower()


async def fetch_keys(lookups: Lookups, message: bytes) -> dict[str, Answer]:
    names = key_names(message)
    answers = await asyncio.gather(*(lookups.query(n, "TXT") for n in names))
    return dict(zip(names, answers, strict=True))


def _dnsfunc(keys: dict[str, Answer]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        ans = keys.get(name.decode("ascii", "replace").rstrip(".").lower())
        if ans is None or not ans.rdata:
            return None
        texts = ans.raw_texts()
        # RFC 6376 §3.6.2.2: several TXT records at the name -> results undefined;
        # we use the one that looks like a key record, as dkimpy's own lookup does.
        for t in texts:
            if b"p=" in t:
                return t
        return texts[0]
    return lookup


def verify_dkim(message: bytes, keys: dict[str, Answer]) -> list[DkimSignature]:
    """Every DKIM-Signature of ``message`` (blocking: call in a thread)."""
    dnsfunc = _dnsfunc(keys)
    out: list[DkimSignature] = []
    sigs = [v for n, v in split_header(message) if n.lower() == "dkim-signature"]
    for idx, raw in enumerate(sigs):
        tags = _tags(raw)
        d = tags.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
        s = tags.get(b"s", b"").decode("ascii", "replace")
        b = re.sub(r"\s+", "", tags.get(b"b", b"").decode("ascii", "replace"))[:12]
        a = tags.get(b"a", b"").decode("ascii", "replace")
        i = tags.get(b"i", b"").decode("ascii", "replace")

        def sig(result: DkimResult, reason: str = "", d: str = d, s: str = s, b: str = b,
                a: str = a, i: str = i) -> DkimSignature:
            return DkimSignature(result, d, s, b, a, reason, i)
        if idx >= MAX_SIGNATURES:
            out.append(sig("neutral", f"not verified: more than {MAX_SIGNATURES} signatures"))
            continue
        if not tags or not d or not s:
            out.append(sig("permerror", "malformed signature"))
            continue
        key = keys.get(_key_name(tags[b"s"], tags[b"d"]))
        if key is not None and key.failed:
            out.append(sig("temperror", "key lookup failed"))
            continue
        if key is None or not key.rdata:
            out.append(sig("permerror", "no key for signature"))
            continue
        verifier = dkim.DKIM(message, logger=_quiet, minkey=MIN_KEY_BITS)
        try:
            ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.KeyFormatError as exc:
            text = str(exc)
            small = "too small" in text
            out.append(sig("fail" if small else "permerror",
                           f"key shorter than {MIN_KEY_BITS} bits" if small else text[:80]))
            continue
        except dkim.DKIMException as exc:
            text = str(exc)
            result: DkimResult = "fail" if "body hash mismatch" in text else "permerror"
            out.append(sig(result, "body hash did not verify" if result == "fail"
                           else text[:80]))
            continue
        except Exception as exc:  # a message dkimpy cannot parse
            out.append(sig("permerror", f"{type(exc).__name__}"))
            continue
        if not ok:
            out.append(sig("fail", "signature did not verify"))
        elif b"l" in tags:
            out.append(sig("policy", "l= body length limit: unsigned content may follow"))
        else:
            out.append(sig("pass"))
    return out


def verify_arc(message: bytes, keys: dict[str, Answer]) -> ArcOutcome:
    """RFC 8617 §5.2: the chain validation status (blocking: call in a thread)."""
    seals = [(_tags(v)) for n, v in split_header(message) if n.lower() == "arc-seal"]
    if not seals:
        return ArcOutcome("none")
    newest = max(seals, key=lambda t: int(t.get(b"i", b"0") or 0)
                 if (t.get(b"i", b"0") or b"0").isdigit() else 0)
    inst_text = newest.get(b"i", b"0")
    instance = int(inst_text) if inst_text.isdigit() else 0
    sealer = newest.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
    for t in seals:
        s, d = t.get(b"s"), t.get(b"d")
        if s and d:
            key = keys.get(_key_name(s, d))
            if key is not None and key.failed:
                return ArcOutcome("fail", instance, sealer, "key lookup failed")
    try:
        cv, _, reason = dkim.arc_verify(message, logger=_quiet, dnsfunc=_dnsfunc(keys),
                                        minkey=MIN_KEY_BITS)
    except Exception as exc:  # malformed ARC headers
        return ArcOutcome("fail", instance, sealer, f"{type(exc).__name__}")
    if cv == dkim.CV_Pass:
        return ArcOutcome("pass", instance, sealer)
    reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
    return ArcOutcome("fail", instance, sealer, reason_text[:80])
