"""``mailstack dkim`` (signing keys per domain) and ``mailstack dns`` (the records a
domain must publish) (docs/behaviour.md §6, §10, §11).

Invariants:
- Keys are made only for hosted domains; the private keys go into the database (every
  node signs with them) and are never printed.
- ``dkim generate`` on a domain without keys makes them active at once. With
  ``--rotate`` on a domain that signs already, the new keys wait (``pending``) until
  ``dkim activate``: their DNS records must be published before any mail is signed
  with them, or receivers would fail the signatures in between.
- ``dns`` prints zone-file lines (absolute names, explicit TTL and class) that a DNS
  server or a provider's form accepts as they are; comments start with ``;``. TXT
  values longer than 255 octets are split into several strings (RFC 1035 §3.3.14).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from cryptography import x509

from ..outbound.dane import MATCH_SHA256, SEL_SPKI, association
from ..outbound.dkim import ALGORITHMS, generate_key, new_selectors, txt_record, txt_strings
from ..outbound.dkim import zone_txt as quoted
from ..outbound.mtasts import our_txt_record
from ..policy.addresses import check_domain
from ..store import NewDkimKey, Store
from ..web.clientconfig import mta_sts_policy
from .common import CliError, Ctx, Parsers, with_store

TTL = 3600


async def need_domain(store: Store, domain: str) -> str:
    name = check_domain(domain)
    if await store.get_domain(name) is None:
        raise CliError(f"no domain {name} is hosted here (add it with "
                       f"`mailstack domain add {name}`)")
    return name


@with_store
async def dkim_generate(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = await need_domain(store, args.domain)
    existing = await store.dkim_keys(name)
    active = [k for k in existing if k.status == "active"]
    if active and not args.rotate:
        raise CliError(f"{name} already has DKIM keys (selectors "
                       f"{', '.join(k.selector for k in active)}); --rotate makes new ones")
    selectors = new_selectors(store.clock(), {k.selector for k in existing})
    generated = await asyncio.to_thread(lambda: [generate_key(a) for a in ALGORITHMS])
    keys = [NewDkimKey(selectors[g.algorithm], g.algorithm, g.private_key, g.public_key)
            for g in generated]
    status = "pending" if active else "active"
    await store.add_dkim_keys(name, keys, status=status)
    for k in keys:
        ctx.print(f"{name}\t{k.selector}\t{k.algorithm}\t{status}")
    if status == "pending":
        ctx.warn(f"publish the new records (`mailstack dns {name}`), wait until DNS serves "
                 f"them, then switch with `mailstack dkim activate {name}`")
    else:
        ctx.warn(f"mail from {name} is signed from now on; publish the records printed by "
                 f"`mailstack dns {name}`")
    return 0


@with_store
async def dkim_activate(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = await need_domain(store, args.domain)
    for k in await store.activate_dkim_keys(name):
        ctx.print(f"{name}\t{k.selector}\t{k.algorithm}\tactive")
    return 0


@with_store
async def dkim_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    domain = await need_domain(store, args.domain) if args.domain else None
    keys = await store.dkim_keys(domain)
    if not keys:
        ctx.warn("no DKIM keys; make them with `mailstack dkim generate DOMAIN`")
    for k in keys:
        created = dt.datetime.fromtimestamp(k.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M")
        ctx.print(f"{k.domain}\t{k.selector}\t{k.algorithm}\t{k.status}\t{created}")
    return 0


def _transport_security(ctx: Ctx, name: str, host: str, rua: str) -> list[str]:
    """MTA-STS (RFC 8461), TLS reporting (RFC 8460) and the MX host's TLSA (RFC 7672)."""
    policy = mta_sts_policy(ctx.settings).decode("ascii")
    policy_id = our_txt_record(name, policy).split("id=", 1)[1].rstrip('"')
    out = ["; MTA-STS (RFC 8461): senders require TLS with a valid certificate to the MX.",
           f"; the policy is served by this server at https://mta-sts.{name}/.well-known/"
           "mta-sts.txt; its content:",
           *(f";   {line}" for line in policy.splitlines()),
           record(f"mta-sts.{name}.", "CNAME", f"{host}."),
           record(f"_mta-sts.{name}.", "TXT", quoted([f"v=STSv1; id={policy_id}"])),
           "; TLS reporting (RFC 8460): senders' daily reports of TLS failures.",
           record(f"_smtp._tls.{name}.", "TXT", quoted([f"v=TLSRPTv1; rua=mailto:{rua}"]))]
    cert_path = ctx.settings.cert_path
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        out.append(f"; TLSA for {host}: no certificate at {cert_path} yet (then "
                   "`mailstack tlsa`)")
        return out
    digest = association(cert, SEL_SPKI, MATCH_SHA256).hex()
    out += [f"; DANE (RFC 7672), in the DNSSEC-signed zone of {host}: the server's key "
            "(`mailstack tlsa` also prints the next key's before a rollover).",
            record(f"_25._tcp.{host}.", "TLSA", f"3 1 1 {digest}")]
    return out


def record(name: str, rtype: str, value: str) -> str:
    return f"{name}\t{TTL}\tIN\t{rtype}\t{value}"


@with_store
async def dns_records(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    name = await need_domain(store, args.domain)
    host = ctx.settings.server.hostname.rstrip(".").lower()
    rua = args.rua or f"postmaster@{name}"
    if "@" not in rua or any(c in rua for c in ' \t;,!"'):
        raise CliError(f"--rua {rua!r} is not a plain mail address")
    keys = await store.dkim_keys(name, statuses=("active", "pending"))
    out = [f"; DNS records for {name}: paste into the zone of {name}",
           f"; (mail server: {host}; it needs A/AAAA records with this server's addresses)",
           "; Mail for the domain goes to this server (RFC 5321 §5.1).",
           record(f"{name}.", "MX", f"10 {host}."),
           "; SPF (RFC 7208): only the domain's MX hosts send its mail.",
           record(f"{name}.", "TXT", quoted(["v=spf1 mx -all"]))]
    if keys:
        out.append("; DKIM public keys (RFC 6376, RFC 8463 Ed25519).")
        for k in keys:
            if k.status == "pending":
                out.append(f"; new key ({k.selector}): publish now, then run "
                           f"`mailstack dkim activate {name}`")
            out.append(record(f"{k.selector}._domainkey.{name}.", "TXT",
                              quoted(txt_strings(txt_record(k.algorithm, k.public_key)))))
        retired = [k.selector for k in await store.dkim_keys(name, statuses=("retired",))]
        if retired:
            out.append(f"; retired selectors (keep their records a few days for mail still "
                       f"in transit, then remove them): {', '.join(retired)}")
    else:
        out.append(f"; no DKIM keys yet: run `mailstack dkim generate {name}` and print "
                   "these records again")
    out += ["; DMARC (RFC 7489): unaligned mail goes to spam; aggregate reports to rua.",
            record(f"_dmarc.{name}.", "TXT",
                   quoted([f"v=DMARC1; p=quarantine; rua=mailto:{rua}"])),
            "; Mail client set-up (autoconfig, autodiscover; RFC 6186/8314 service records).",
            record(f"autoconfig.{name}.", "CNAME", f"{host}."),
            record(f"autodiscover.{name}.", "CNAME", f"{host}.")]
    out += _transport_security(ctx, name, host, rua)
    ls = ctx.settings.listeners
    for service, listener in (("_submissions._tcp", ls.submissions),
                              ("_submission._tcp", ls.submission),
                              ("_imaps._tcp", ls.imaps), ("_pop3s._tcp", ls.pop3s)):
        if listener.enabled and listener.port:
            out.append(record(f"{service}.{name}.", "SRV", f"0 1 {listener.port} {host}."))
    ctx.print("\n".join(out))
    return 0


def register(p: Parsers) -> None:
    dk = p.group("dkim", "DKIM signing keys per domain (RSA-2048 and Ed25519).")
    sp = p.cmd(dk, "generate", dkim_generate,
               "Make a domain's two signing keys and print their selectors.")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--rotate", action="store_true",
                    help="make new keys for a domain that has keys (they sign after "
                         "`mailstack dkim activate DOMAIN`)")
    sp = p.cmd(dk, "activate", dkim_activate,
               "Sign with the keys made by --rotate (publish their DNS records first).")
    sp.add_argument("domain", metavar="DOMAIN")
    sp = p.cmd(dk, "list", dkim_list, "List DKIM keys: domain, selector, algorithm, status.")
    sp.add_argument("domain", nargs="?", metavar="DOMAIN")
    sp = p.cmd(p.sub, "dns", dns_records,
               "Print every DNS record a hosted domain must publish (zone-file lines).")
    sp.add_argument("domain", metavar="DOMAIN")
    sp.add_argument("--rua", metavar="ADDRESS",
                    help="where DMARC aggregate reports go (default postmaster@DOMAIN)")
