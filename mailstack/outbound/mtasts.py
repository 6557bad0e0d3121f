"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the policy fetched over HTTPS, its
cache in the store, and the PKIX trust used for it. docs/behaviour.md §6.

Invariants:
- The policy is fetched only from ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
  with PKIX validation of ``mta-sts.<domain>`` (system CAs plus the operator's extra CA
  files), no redirects (RFC 8461 §3.3), a total timeout and a 64 KiB cap on the body;
  only a 200 answer with media type text/plain counts.
- A fetched policy is cached (store, so every node shares it) for ``max_age`` and
  refetched only when the TXT ``id`` differs from the cached one or the cache expired
  (RFC 8461 §5.1). A failed or invalid fetch keeps using the unexpired cached policy; a
  missing or failing TXT lookup too (§3.3). No cache and no fetch -> no policy.
- Name lookups for the fetch go through the configured resolver (``SecureResolver``),
  like every other outbound lookup; DNSSEC is not required for MTA-STS.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..store.transport import CachedStsPolicy
from .dnssec import SecureResolver

log = logging.getLogger("mailstack.outbound.mtasts")

MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: at most about one year
WELL_KNOWN = "/.well-known/mta-sts.txt"
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")

Mode = Literal["enforce", "testing", "none"]


class StsError(Exception):
    """A policy could not be fetched or is invalid. ``result_type`` is the RFC 8460
    §4.3.2.1 failure type for TLS reports."""

    def __init__(self, message: str, result_type: str = "sts-policy-fetch-error") -> None:
        super().__init__(message)
        self.result_type = result_type


@dataclass(frozen=True)
class StsPolicy:
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""
    text: str = ""

    def allows(self, mx_host: str) -> bool:
        """Is ``mx_host`` one of the policy's MX patterns (RFC 8461 §4.1)?"""
        return any(mx_matches(p, mx_host) for p in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """An ``mx`` pattern: an exact name or ``*.`` + suffix matching exactly one label
    more on the left (RFC 8461 §4.1)."""
    pattern = pattern.strip().lower().rstrip(".")
    host = host.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_txt(strings: Sequence[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT RRset (RFC 8461 §3.1): records not starting
    with ``v=STSv1;`` are ignored; anything but exactly one valid record -> None."""
    found = [s for s in strings if re.match(r"^v=STSv1\s*(;|$)", s)]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            return None
        fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def txt_strings(records: Sequence[object]) -> list[str]:
    """dnspython TXT rdatas -> one string each (character-strings concatenated)."""
    out = []
    for r in records:
        chunks = getattr(r, "strings", ())
        out.append(b"".join(chunks).decode("utf-8", "replace"))
    return out


def parse_policy(text: str, policy_id: str = "") -> StsPolicy:
    """Parse a policy file (RFC 8461 §3.2); raises ``StsError`` (sts-policy-invalid)."""
    fields: dict[str, list[str]] = {}
    for raw in re.split(r"\r?\n", text):
        if not raw.strip():
            continue
        key, colon, value = raw.partition(":")
        if not colon:
            raise StsError(f"policy line without a colon: {raw[:80]!r}", "sts-policy-invalid")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version", [""])[0] != "STSv1":
        raise StsError("policy version is not STSv1", "sts-policy-invalid")
    mode = fields.get("mode", [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise StsError(f"policy mode {mode!r} is not enforce, testing or none",
                       "sts-policy-invalid")
    age = fields.get("max_age", [""])[0]
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise StsError(f"policy max_age {age!r} is not 0..{MAX_AGE_LIMIT}",
                       "sts-policy-invalid")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []) if m)
    if mode != "none" and not mx:
        raise StsError("policy lists no mx", "sts-policy-invalid")
    return StsPolicy(mode, mx, int(age), policy_id, text)  # type: ignore[arg-type]


# --- trust ---------------------------------------------------------------------------


def split_files(setting: str) -> list[str]:
    return [p.strip() for p in setting.split(",") if p.strip()]


def pkix_context(extra_ca_files: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context validating certificates against the system's CAs plus
    ``extra_ca_files``, with host name checking (RFC 8461 §4.2)."""
    ctx = ssl.create_default_context()
    for path in extra_ca_files:
        ctx.load_verify_locations(cafile=path)
    return ctx


def load_ca_certs(extra_ca_files: Sequence[str] = ()) -> list[bytes]:
    """PEM bytes of every trusted CA file (system bundle + extras), for verifiers that do
    not use OpenSSL's store (``tlspolicy`` reports PKIX failures in testing mode)."""
    paths = [ssl.get_default_verify_paths().cafile or "", *extra_ca_files]
    out = []
    for p in paths:
        if p and Path(p).is_file():
            out.append(Path(p).read_bytes())
    return out


# --- fetching ------------------------------------------------------------------------


class HttpResolver(AbstractResolver):
    """aiohttp host lookups through the configured resolver (A, then AAAA)."""

    def __init__(self, resolver: SecureResolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for rdtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            ans = await self.resolver.query(host, rdtype)
            for addr in ans.records:
                results.append({"hostname": host, "host": addr, "port": port,
                                "family": fam, "proto": 0,
                                "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"no address for {host}")
        return results

    async def close(self) -> None:
        return None


async def fetch_policy_text(domain: str, *, resolver: SecureResolver,
                            ssl_context: ssl.SSLContext, timeout: float,
                            port: int = 443) -> str:
    """GET the policy file; raises ``StsError`` on anything but a clean 200 text/plain
    answer of at most 64 KiB."""
    host = f"mta-sts.{domain}"
    url = f"https://{host}{'' if port == 443 else f':{port}'}{WELL_KNOWN}"
    connector = aiohttp.TCPConnector(ssl=ssl_context, resolver=HttpResolver(resolver),
                                     use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                trust_env=False) as session, session.get(
                url, allow_redirects=False, headers={"User-Agent": "mailstack"}) as resp:
            if resp.status != 200:
                raise StsError(f"{url}: HTTP {resp.status}")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "text/plain":
                raise StsError(f"{url}: media type {ctype or '(none)'} is not text/plain",
                               "sts-policy-invalid")
            body = await resp.content.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise StsError(f"{url}: policy larger than {MAX_POLICY_BYTES} bytes",
                               "sts-policy-invalid")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise StsError(f"{url}: certificate not valid: {exc}", "sts-webpki-invalid") from exc
    except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
        raise StsError(f"{url}: {type(exc).__name__}: {exc}") from exc
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StsError(f"{url}: policy is not UTF-8", "sts-policy-invalid") from exc


class PolicyCache(Protocol):
    async def get_mta_sts_policy(self, domain: str) -> CachedStsPolicy | None: ...

    async def put_mta_sts_policy(self, policy: CachedStsPolicy) -> None: ...


@dataclass(frozen=True)
class StsLookup:
    """The policy in force for a domain (None: none), and a fetch failure to report."""

    policy: StsPolicy | None
    error: StsError | None = None
    from_cache: bool = False


@dataclass
class MtaSts:
    """Finds the MTA-STS policy of destination domains (see the module docstring)."""

    resolver: SecureResolver
    cache: PolicyCache
    ssl_context: ssl.SSLContext
    timeout: float = 20.0
    clock: Callable[[], float] = field(default=time.time)
    https_port: int = 443  # tests serve the policy on an ephemeral port

    async def lookup(self, domain: str) -> StsLookup:
        domain = domain.lower().rstrip(".")
        now = self.clock()
        cached = await self.cache.get_mta_sts_policy(domain)
        if cached is not None and cached.expires_at <= now:
            cached = None
        txt = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
        policy_id = parse_txt(txt_strings(txt.rdata)) if txt.status == "records" else None
        if policy_id is None:
            # No (valid) record, or the lookup failed: an unexpired policy stays in force.
            return StsLookup(self._parse_cached(cached), from_cache=cached is not None)
        if cached is not None and cached.policy_id == policy_id:
            return StsLookup(self._parse_cached(cached), from_cache=True)
        try:
            text = await fetch_policy_text(domain, resolver=self.resolver,
                                           ssl_context=self.ssl_context,
                                           timeout=self.timeout, port=self.https_port)
            policy = parse_policy(text, policy_id)
        except StsError as exc:
            log.info("MTA-STS policy of %s: %s", domain, exc)
            return StsLookup(self._parse_cached(cached), exc, from_cache=cached is not None)
        await self.cache.put_mta_sts_policy(CachedStsPolicy(
            domain, policy_id, text, now, now + policy.max_age))
        return StsLookup(policy)

    @staticmethod
    def _parse_cached(cached: CachedStsPolicy | None) -> StsPolicy | None:
        if cached is None:
            return None
        try:
            return parse_policy(cached.policy_text, cached.policy_id)
        except StsError:
            return None


# --- our own domains (printed by ``mailstack dns``, served by the web listener) --------


def our_policy_text(mx_hosts: Sequence[str], mode: Mode = "enforce",
                    max_age: int = 604800) -> str:
    """The policy file to serve at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
    for a hosted domain whose MX hosts are ``mx_hosts`` (RFC 8461 §3.2)."""
    lines = ["version: STSv1", f"mode: {mode}",
             *(f"mx: {h.rstrip('.').lower()}" for h in mx_hosts), f"max_age: {max_age}"]
    text = "\r\n".join(lines) + "\r\n"
    parse_policy(text)  # never hand out a policy we would refuse ourselves
    return text


def our_txt_record(domain: str, policy_text: str) -> str:
    """The ``_mta-sts`` TXT record announcing ``policy_text``; its id is derived from
    the policy's content, so it changes exactly when the policy does (RFC 8461 §3.1)."""
    policy_id = hashlib.sha256(policy_text.encode()).hexdigest()[:20]
    return f'_mta-sts.{domain.rstrip(".")}. IN TXT "v=STSv1; id={policy_id}"'
