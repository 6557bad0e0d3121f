"""``mailstack tls status``: the certificate in use, its names, issuer, validity and the
TLSA record that matches it (RFC 6698 / RFC 7671 "3 1 1"), and the state of ACME
renewal (docs/behaviour.md §1, §10)."""

from __future__ import annotations

import argparse
import datetime as dt

from ..config import acme_methods
from ..store import Store
from ..tls import cert_names, load_first_cert, tlsa_311
from ..web.acme import LOCK_NAME, renewal_due, wanted_names
from .common import CliError, Ctx, Parsers, with_store


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@with_store
async def tls_status(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    s = ctx.settings
    path = s.cert_path
    try:
        cert = load_first_cert(path)
    except (OSError, ValueError, IndexError) as exc:
        raise CliError(f"no readable certificate at {path} ({exc})") from exc
    now = dt.datetime.now(dt.UTC).timestamp()
    end = cert.not_valid_after_utc.timestamp()
    ctx.print(f"certificate: {path}")
    ctx.print(f"  names:   {', '.join(cert_names(cert)) or '(none in subjectAltName)'}")
    ctx.print(f"  issuer:  {cert.issuer.rfc4514_string()}"
              + ("  (self-signed)" if cert.issuer == cert.subject else ""))
    ctx.print(f"  valid:   {_when(cert.not_valid_before_utc.timestamp())} to {_when(end)} "
              f"({(end - now) / 86400:.1f} days left)")
    ctx.print(f"  TLSA:    _25._tcp.{s.server.hostname}. IN TLSA 3 1 1 {tlsa_311(cert)}")
    if not s.tls.acme:
        ctx.print("acme:      off (tls.acme = false)")
        return 0
    names = wanted_names(s.server.hostname, [d.name for d in await store.list_domains()])
    verdict = renewal_due(cert, names, now, s.tls.acme_renew_days)
    ctx.print(f"acme:      on, {s.tls.acme_directory_url}")
    ctx.print(f"  validation: {', then '.join(acme_methods(s)) or 'none (no listener)'}")
    ctx.print(f"  wanted:  {', '.join(names)}")
    ctx.print(f"  renewal: {'due: ' + verdict.reason if verdict.due else 'not due'}")
    stored = await store.load_certificate(LOCK_NAME)
    if stored is not None and stored.cert_pem:
        ctx.print(f"  stored:  shared copy updated {_when(stored.updated_at)}")
    if stored is not None and stored.holder and stored.locked_until > now:
        ctx.print(f"  lock:    node {stored.holder} is renewing (until "
                  f"{_when(stored.locked_until)})")
    return 0


def register(p: Parsers) -> None:
    group = p.group("tls", "The server's TLS certificate and its ACME renewal.")
    p.cmd(group, "status", tls_status,
          "Print the certificate's names, issuer, expiry and TLSA 3 1 1 record.")
