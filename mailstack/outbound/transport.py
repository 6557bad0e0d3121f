"""What the SMTP client must do about TLS for one MX host: the contract between the
transport-security decision (DANE, RFC 7672; MTA-STS, RFC 8461; a transport map's
``require_tls``) and the client that executes it.

The decision is pure (made from DNS facts and settings); the client only executes it:
- ``require_tls`` false: opportunistic STARTTLS (RFC 3207): use it when offered, any
  certificate accepted, plaintext when not offered or when the handshake fails (the
  client then reconnects without STARTTLS).
- ``require_tls`` true: no STARTTLS offered, or a failed handshake -> the host is
  deferred (4.7.5 / 4.7.4), never plaintext.
- ``verify`` set: after the handshake the client calls it with the peer's certificate
  chain (DER, leaf first) and the MX host name; a returned string is the reason the peer
  is not authenticated -> QUIT, host deferred with that reason; ``None`` -> authenticated.
- ``ssl_context``: a context to use instead of the client's default unverified one
  (MTA-STS needs PKIX validation with host name checking: the client passes the MX host
  name as ``server_hostname``).
- ``defer_reason`` non-empty: do not connect to this MX host at all; defer it with that
  reason (4.7.5) and try the next MX host. Used when the TLSA lookup failed (SERVFAIL,
  bogus: RFC 7672 §2.2) or an MTA-STS policy in enforce mode does not list the host
  (RFC 8461 §4.1). Such a requirement also has ``require_tls`` and a ``verify`` that
  always refuses, so a client that ignored the field would still never send the message
  unprotected.
- The peer counts as authenticated (delivery log, ``queue show``) when ``verify`` returned
  None for policy "dane" or "mta-sts"; the ``verify`` of "mta-sts-testing" only reports
  and always returns None (RFC 8461 §5: testing mode never blocks delivery).
- ``report``: when set, the client calls it once per connection attempt with an RFC 8460
  result type and a detail text: "starttls-not-supported" when STARTTLS was not offered,
  "validation-failure" when the handshake failed, and "success" after a TLS session
  only when there is no ``verify`` (``verify`` reports its own outcome). The counts feed
  TLS reports (``tlsrpt``).

The producers live beside this module: ``tlspolicy`` (the pure decision), ``dane``,
``dnssec``, ``mtasts``; ``security.TransportSecurity`` is the ``tls_policy`` callable
routing calls as ``await tls_policy(domain, mx_host, mx_secure)``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Verifier = Callable[[Sequence[bytes], str], str | None]
Reporter = Callable[[str, str], None]


@dataclass(frozen=True)
class TlsRequirement:
    # "opportunistic" | "dane" | "dane-unusable" | "mta-sts" | "mta-sts-testing" | "required"
    policy: str
    require_tls: bool = False
    verify: Verifier | None = None
    ssl_context: ssl.SSLContext | None = None
    defer_reason: str = ""
    report: Reporter | None = None


OPPORTUNISTIC = TlsRequirement("opportunistic")
