"""The header fields that carry the verdicts: ``Authentication-Results`` (RFC 8601)
and ``Received-SPF`` (RFC 7208 §9.1), and the removal of forged results.

Invariants:
- RFC 8601 §5: every ``Authentication-Results`` field already in the message whose
  authserv-id is ours (compared case-insensitively, comments skipped) is removed before
  ours is added, so a result forged by the sender never survives. Fields of other
  authserv-ids are kept (they are someone else's claims, and we do not act on them).
- Everything that came from the client (addresses, HELO, domains, selectors) is
  quoted or reduced to safe characters: no CR, LF or ``;`` can reach our fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .dkimcheck import ArcOutcome, DkimSignature
from .dmarc import DmarcOutcome
from .spf import SpfOutcome

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@\-]+")
_DOMAIN = re.compile(r"[A-Za-z0-9.\-_]+")


def pvalue(text: str) -> str:
    """An RFC 8601 §2.2 pvalue: as is when it is a token, else a quoted-string."""
    if text and _TOKEN.fullmatch(text):
        return text
    clean = "".join(c for c in text if c.isprintable())[:256]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def domain_value(text: str) -> str:
    return text if text and _DOMAIN.fullmatch(text) else pvalue(text)


def comment(text: str) -> str:
    """A comment of printable ASCII with no parentheses or backslashes inside (the
    field stays 7-bit: RFC 8601 §2.2 comments are CFWS)."""
    text = text.replace(" (", ", ").replace("§", "section ")
    clean = "".join(c for c in text if c.isascii() and c.isprintable()
                    and c not in "()\\")[:200]
    return f"({clean})"


def authserv_id(value: bytes) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2): the first
    token after skipping CFWS (comments may nest)."""
    text = value.decode("utf-8", "replace")
    out: list[str] = []
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            if c in " \t\r\n":
                if out:
                    break
            elif c == ";":
                break
            else:
                out.append(c)
        i += 1
    return "".join(out).strip().lower()


def remove_forged(content: bytes, our_id: str) -> tuple[bytes, int]:
    """``content`` without the Authentication-Results fields claiming ``our_id``
    (RFC 8601 §5); returns the new content and how many were removed."""
    end = content.find(b"\r\n\r\n")
    head_end = len(content) if end < 0 else end + 2
    head, body = content[:head_end], content[head_end:]
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    removed = 0
    i = 0
    ours = our_id.rstrip(".").lower()
    while i < len(lines):
        line = lines[i]
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"authentication-results":
            whole = b"\r\n".join([value, *lines[i + 1:j]])
            if authserv_id(whole).rstrip(".") == ours:
                removed += 1
                i = j
                continue
        kept.extend(lines[i:j])
        i = j
    if not removed:
        return content, 0
    return b"\r\n".join(kept) + body, removed


def _dkim_part(sig: DkimSignature) -> str:
    parts = [f"dkim={sig.result}"]
    if sig.reason:
        parts.append(comment(sig.reason))
    if sig.domain:
        parts.append(f"header.d={domain_value(sig.domain)}")
    if sig.selector:
        parts.append(f"header.s={domain_value(sig.selector)}")
    if sig.b_prefix:
        parts.append(f"header.b={pvalue(sig.b_prefix[:8])}")
    return " ".join(parts)


def authentication_results(
    *, authserv: str, client_ip: str, iprev: str, client_host: str | None,
    spf: SpfOutcome, spf_identity: str, spf_scope: str,
    dkim: Sequence[DkimSignature], dmarc: DmarcOutcome, arc: ArcOutcome,
    override: str = "",
) -> bytes:
    """Our one ``Authentication-Results`` field (RFC 8601 §2.2), one method per line."""
    items = [f"iprev={iprev} policy.iprev={pvalue(client_ip)}"
             + (f" {comment(client_host)}" if client_host else "")]
    spf_part = f"spf={spf.result}"
    if spf.problem:
        spf_part += f" {comment(spf.problem)}"
    if spf_scope == "helo":
        spf_part += f" smtp.helo={pvalue(spf_identity)}"
    else:
        spf_part += f" smtp.mailfrom={pvalue(spf_identity)}"
    items.append(spf_part)
    if dkim:
        items.extend(_dkim_part(s) for s in dkim)
    else:
        items.append("dkim=none")
    dm = f"dmarc={dmarc.result}"
    notes = []
    if dmarc.result in ("pass", "fail"):
        notes.append(f"p={dmarc.policy}")
        if dmarc.result == "fail":
            notes.append(f"dis={dmarc.disposition}")
    if dmarc.reason:
        notes.append(dmarc.reason)
    if override:
        notes.append(override)
    if notes:
        dm += " " + comment("; ".join(notes))
    if dmarc.from_domain:
        dm += f" header.from={domain_value(dmarc.from_domain)}"
    items.append(dm)
    arc_part = f"arc={arc.result}"
    if arc.result != "none":
        detail = f"i={arc.instance} sealed by {arc.sealer}" if arc.sealer else ""
        if arc.reason:
            detail = f"{detail}; {arc.reason}" if detail else arc.reason
        if detail:
            arc_part += f" {comment(detail)}"
    items.append(arc_part)
    text = f"Authentication-Results: {authserv};\r\n\t" + ";\r\n\t".join(items) + "\r\n"
    return text.encode("utf-8")


SPF_COMMENTS = {
    "pass": "domain of {s} designates {ip} as permitted sender",
    "fail": "domain of {s} does not designate {ip} as permitted sender",
    "softfail": "domain of transitioning {s} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {s}",
    "none": "domain of {s} does not publish an SPF record",
    "temperror": "error in processing during lookup of {s}",
    "permerror": "permanent error in processing the SPF record of {s}",
}


def received_spf(*, receiver: str, spf: SpfOutcome, client_ip: str, identity: str,
                 scope: str, mail_from: str, helo: str | None) -> bytes:
    """RFC 7208 §9.1."""
    note = SPF_COMMENTS[spf.result].format(s=identity, ip=client_ip)
    kv = [f"client-ip={client_ip}", f"envelope-from={pvalue(mail_from or '')}"]
    if helo:
        kv.append(f"helo={pvalue(helo)}")
    if spf.problem:
        kv.append(f"problem={pvalue(spf.problem)}")
    if spf.mechanism:
        kv.append(f"mechanism={pvalue(spf.mechanism)}")
    kv += [f"identity={scope}", f"receiver={domain_value(receiver)}"]
    text = (f"Received-SPF: {spf.result} {comment(receiver + ': ' + note)}\r\n\t"
            + ";\r\n\t".join(kv) + ";\r\n")
    return text.encode("utf-8")
