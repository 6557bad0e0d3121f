"""The transport-security decision for one MX host: DNS facts and an MTA-STS policy in,
a ``TlsRequirement`` out. Pure: no sockets, no DNS, no SQL; the clock is a parameter.
docs/behaviour.md §6.

The order (RFC 7672 §2.2, RFC 8461 §2 "DANE wins when both apply"):
1. The MX RRset was DNSSEC-secure and DANE is on:
   - the TLSA lookup failed (SERVFAIL, bogus, timeout) -> defer this MX host; never a
     downgrade to opportunistic TLS (RFC 7672 §2.2, docs/behaviour.md §12);
   - secure TLSA records, some usable (DANE-TA/DANE-EE) -> policy "dane": STARTTLS
     mandatory, the peer must match (``dane.verify_dane``), else defer (4.7.5);
   - secure TLSA records, none usable -> "dane-unusable": STARTTLS mandatory, any
     certificate (RFC 7672 §2.2);
   - secure denial of TLSA, or insecure address/TLSA answers -> go on to 2.
2. An MTA-STS policy is in force (``mtasts``):
   - enforce and the MX host is not in the policy -> defer this host (RFC 8461 §4.1);
   - enforce -> "mta-sts": STARTTLS mandatory, PKIX-valid certificate for the MX host
     name (``ssl_context`` with host name checking, and ``verify`` checks again);
   - testing -> "mta-sts-testing": opportunistic, failures only reported (§5);
   - none -> 3.
3. Otherwise "opportunistic" (RFC 3207).

Every requirement carries TLS-RPT reporting (RFC 8460 §4.3) through ``reporter`` when
one is given: policy type "tlsa", "sts" or "no-policy-found" for the destination domain.
"""

from __future__ import annotations

import datetime as dt
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .dane import cert_matches_any, cert_names, make_verifier, usable
from .dnssec import TlsaLookup
from .mtasts import StsPolicy
from .transport import OPPORTUNISTIC, TlsRequirement, Verifier

# (policy_domain, policy_type, result_type, mx_host, detail)
ResultSink = Callable[[str, str, str, str, str], None]


@dataclass(frozen=True)
class PolicyFacts:
    """What is known about one (destination domain, MX host)."""

    domain: str
    mx_host: str
    mx_secure: bool
    tlsa: TlsaLookup | None = None  # None: not looked up (MX insecure or DANE off)
    sts: StsPolicy | None = None


def _refuse(reason: str) -> Verifier:
    def verify(_chain: Sequence[bytes], _host: str) -> str | None:
        return reason
    return verify


def deferral(policy: str, reason: str) -> TlsRequirement:
    """Skip this MX host (see ``transport.TlsRequirement.defer_reason``)."""
    return TlsRequirement(policy, require_tls=True, verify=_refuse(reason), defer_reason=reason)


def decide(facts: PolicyFacts, *, clock: Callable[[], float],
           pkix_context: Callable[[], ssl.SSLContext] | None = None,
           trust: Store | None = None, sink: ResultSink | None = None) -> TlsRequirement:
    """The requirement for ``facts`` (order in the module docstring). ``pkix_context``
    builds the MTA-STS client context; ``trust`` is the CA store the MTA-STS verifier
    uses; ``sink`` receives TLS-RPT results."""
    domain, host = facts.domain.lower().rstrip("."), facts.mx_host.lower().rstrip(".")

    def reporter(policy_type: str) -> Callable[[str, str], None] | None:
        if sink is None:
            return None
        return lambda result, detail: sink(domain, policy_type, result, host, detail)

    tlsa = facts.tlsa
    if facts.mx_secure and tlsa is not None:
        if tlsa.status == "failed":
            report = reporter("tlsa")
            if report:
                report("dnssec-invalid", tlsa.detail)
            return deferral("dane", f"TLSA lookup for {host} failed: {tlsa.detail}")
        if tlsa.status == "secure":
            good = usable(tlsa.records)
            if good:
                names = [n for n in (tlsa.base, domain) if n]
                verify = _reporting(make_verifier(good, names, clock), reporter("tlsa"),
                                    "validation-failure")
                return TlsRequirement("dane", require_tls=True, verify=verify,
                                      report=reporter("tlsa"))
            return TlsRequirement("dane-unusable", require_tls=True,
                                  report=reporter("tlsa"))
    sts = facts.sts
    if sts is not None and sts.mode == "enforce":
        if not sts.allows(host):
            report = reporter("sts")
            if report:
                report("validation-failure", f"MX host {host} is not in the MTA-STS policy")
            return deferral("mta-sts", f"MX host {host} is not listed in the MTA-STS policy "
                            f"of {domain} (RFC 8461 §4.1)")
        sts_verify = _sts_verifier(trust, clock, reporter("sts"), enforce=True)
        ctx = pkix_context() if pkix_context is not None else None
        return TlsRequirement("mta-sts", require_tls=True, verify=sts_verify, ssl_context=ctx,
                              report=reporter("sts"))
    if sts is not None and sts.mode == "testing":
        if not sts.allows(host):
            report = reporter("sts")
            if report:
                report("validation-failure", f"MX host {host} is not in the MTA-STS policy")
        return TlsRequirement("mta-sts-testing",
                              verify=_sts_verifier(trust, clock, reporter("sts"),
                                                   enforce=False),
                              report=reporter("sts"))
    report = reporter("no-policy-found")
    if report is None:
        return OPPORTUNISTIC
    return TlsRequirement("opportunistic", report=report)


def _reporting(verify: Verifier, report: Callable[[str, str], None] | None,
               failure: str) -> Verifier:
    if report is None:
        return verify

    def wrapped(chain: Sequence[bytes], host: str) -> str | None:
        reason = verify(chain, host)
        report("success" if reason is None else failure, reason or "")
        return reason
    return wrapped


# --- MTA-STS certificate check (RFC 8461 §4.2) ----------------------------------------


def trust_store(ca_pems: Sequence[bytes]) -> Store:
    """A ``cryptography`` CA store from PEM bundles (unparseable entries skipped)."""
    certs: list[x509.Certificate] = []
    for pem in ca_pems:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                certs.extend(x509.load_pem_x509_certificates(pem))
            except ValueError:
                continue
    return Store(certs)


def pkix_problem(chain_der: Sequence[bytes], host: str, trust: Store, now: dt.datetime
                 ) -> tuple[str, str] | None:
    """None when the chain is PKIX-valid for ``host``, else (RFC 8460 result type, why)."""
    if not chain_der:
        return "validation-failure", "the server sent no certificate"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chain = [x509.load_der_x509_certificate(bytes(d)) for d in chain_der]
    except ValueError:
        return "validation-failure", "the server's certificates cannot be parsed"
    leaf = chain[0]
    if not cert_matches_any(leaf, [host]):
        return ("certificate-host-mismatch",
                f"certificate names {', '.join(cert_names(leaf)) or '(none)'} do not "
                f"match {host}")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return "certificate-expired", "the certificate is outside its validity dates"
    try:
        verifier = (PolicyBuilder().store(trust).time(now)
                    .build_server_verifier(x509.DNSName(host)))
        verifier.verify(leaf, chain[1:])
    except (VerificationError, ValueError) as exc:
        return "certificate-not-trusted", f"certificate not trusted: {exc}"
    return None


def _sts_verifier(trust: Store | None, clock: Callable[[], float],
                  report: Callable[[str, str], None] | None, *, enforce: bool) -> Verifier:
    def verify(chain_der: Sequence[bytes], host: str) -> str | None:
        if trust is None:  # no store: the ssl_context did the PKIX check; names only
            leaf_ok = bool(chain_der) and cert_matches_any(
                x509.load_der_x509_certificate(bytes(chain_der[0])), [host])
            problem = None if leaf_ok else ("certificate-host-mismatch",
                                            f"certificate does not match {host}")
        else:
            now = dt.datetime.fromtimestamp(clock(), dt.UTC)
            problem = pkix_problem(chain_der, host, trust, now)
        if report is not None:
            report("success" if problem is None else problem[0],
                   "" if problem is None else problem[1])
        if problem is None or not enforce:
            return None
        return f"MTA-STS: {problem[1]}"
    return verify
