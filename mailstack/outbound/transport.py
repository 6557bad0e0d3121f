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
  (MTA-STS needs PKIX validation with host name checking).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Verifier = Callable[[Sequence[bytes], str], str | None]


@dataclass(frozen=True)
class TlsRequirement:
    policy: str  # "opportunistic" | "dane" | "dane-unusable" | "mta-sts" | "required"
    require_tls: bool = False
    verify: Verifier | None = None
    ssl_context: ssl.SSLContext | None = None


OPPORTUNISTIC = TlsRequirement("opportunistic")
