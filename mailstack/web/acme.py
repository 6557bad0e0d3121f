"""Certificates obtained and renewed by ACME (RFC 8555), with the ``acme`` library.

One certificate names the server's host name plus ``autoconfig.``, ``autodiscover.`` and
``mta-sts.`` of every hosted domain. Validation is HTTP-01 (RFC 8555 §8.3): the key
authorization is put in ``Services.acme_challenges`` and served by the port-80 listener;
or TLS-ALPN-01 (RFC 8737) when port 80 is not usable or HTTP-01 failed: a challenge
certificate per name in ``Services.acme_alpn``, presented by the https listener to
ClientHellos offering ``acme-tls/1`` (``tlsalpn``). ``tls.acme_challenge`` chooses.

Invariants:
- A renewal is decided by ``renewal_due`` (pure): no certificate, a self-signed one, a
  missing name, or less than ``tls.acme_renew_days`` (at most a third of the lifetime)
  left.
- Only the node holding the store's lock talks to the ACME server; it saves the new
  certificate in the store, and every node (itself included) writes it to its data dir
  (0600) and swaps it into the live ``SSLContext`` shared by all listeners. Open
  connections keep the certificate they were made with; new ones get the new one: no
  listener restarts, no connection dropped.
- The ACME protocol (blocking HTTP) runs in a thread; the event loop keeps serving,
  which it must, since the CA's validation request comes to our own listener.
- A failure is logged and retried at the next check; the served certificate stays.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import metrics
from ..config import Settings, acme_methods
from ..store import Store
from ..tls import cert_names, reload_context, write_private

log = logging.getLogger("mailstack.acme")

LOCK_NAME = "acme"
LOCK_TTL = 900.0  # seconds a node may take to obtain a certificate
MAX_NAMES = 100  # Let's Encrypt's limit of names per certificate
ISSUE_TIMEOUT = 300.0
RETRY_AFTER_FAILURE = 300.0  # seconds; a failed check is tried again sooner


def wanted_names(hostname: str, domains: Iterable[str]) -> list[str]:
    """The host name first, then ``autoconfig.``, ``autodiscover.``, ``mta-sts.`` of
    each hosted domain; at most ``MAX_NAMES``."""
    names = [hostname.lower().rstrip(".")]
    for d in sorted(domains):
        for prefix in ("autoconfig.", "autodiscover.", "mta-sts."):
            n = prefix + d
            if n not in names:
                names.append(n)
    if len(names) > MAX_NAMES:
        log.warning("acme: %d names wanted, only the first %d fit in one certificate",
                    len(names), MAX_NAMES)
    return names[:MAX_NAMES]


@dataclass(frozen=True)
class RenewalVerdict:
    due: bool
    reason: str


def renewal_due(cert: x509.Certificate | None, names: Iterable[str], now: float,
                renew_days: float) -> RenewalVerdict:
    """Does the served certificate need replacing? Pure."""
    if cert is None:
        return RenewalVerdict(True, "no certificate")
    if cert.issuer == cert.subject:
        return RenewalVerdict(True, "self-signed certificate")
    missing = sorted(set(names) - set(cert_names(cert)))
    if missing:
        return RenewalVerdict(True, f"names not covered: {', '.join(missing)}")
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    margin = min(renew_days * 86400, (end - start) / 3)
    if now >= end - margin:
        when = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return RenewalVerdict(True, f"expires {when}")
    return RenewalVerdict(False, "valid")


def read_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None


class AcmeManager:
    """Checks the certificate now and then; obtains, saves, picks up and swaps it."""

    def __init__(self, settings: Settings, store: Store,
                 challenges: MutableMapping[str, str], contexts: Callable[[], list[ssl.SSLContext]],
                 *, clock: Callable[[], float] = time.time,
                 alpn: MutableMapping[str, str] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.challenges = challenges  # HTTP-01: token -> key authorization
        self.alpn = alpn if alpn is not None else {}  # TLS-ALPN-01: name -> key authz
        self._alpn_names: set[str] = set()  # the names this manager put in ``alpn``
        self.contexts = contexts
        self.clock = clock
        self.holder = store.node_id
        self._loaded_at = 0.0  # updated_at of the stored certificate we serve
        self._checking = asyncio.Lock()  # one check at a time in this process

    # --- the periodic check -----------------------------------------------------------
    async def run_forever(self) -> None:
        interval = self.settings.tls.acme_check_interval_seconds
        while True:
            try:
                result = await self.check()
                log.info("acme: %s", result)
                delay = interval
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("acme: check failed; trying again later")
                delay = min(interval, RETRY_AFTER_FAILURE)
            await asyncio.sleep(delay)

    async def check(self) -> str:
        """One round: pick up another node's newer certificate, or renew if due.
        Returns what happened ("fresh", "picked up ...", "obtained ...", "busy ...")."""
        async with self._checking:
            return await self._check()

    async def _check(self) -> str:
        s = self.settings
        stored = await self.store.load_certificate(LOCK_NAME)
        if stored is not None and stored.cert_pem and stored.updated_at > self._loaded_at:
            on_disk = s.cert_path.read_bytes() if s.cert_path.exists() else b""
            if on_disk != stored.cert_pem.encode():
                await self.install(stored.cert_pem.encode(), stored.key_pem.encode())
                self._loaded_at = stored.updated_at
                return "picked up the certificate another node obtained"
            # on disk already: another worker on this data dir wrote it (serve --workers),
            # or it is what we started with; either way, serve it from here too
            for ctx in self.contexts():
                reload_context(ctx, s.cert_path, s.key_path)
            self._loaded_at = stored.updated_at
        names = wanted_names(s.server.hostname,
                             [d.name for d in await self.store.list_domains()])
        verdict = renewal_due(read_cert(s.cert_path), names, self.clock(), s.tls.acme_renew_days)
        if not verdict.due:
            return "fresh"
        if not await self.store.acquire_cert_lock(LOCK_NAME, self.holder, LOCK_TTL):
            return "busy: another node is renewing"
        try:
            log.info("acme: obtaining a certificate (%s) for %s", verdict.reason,
                     ", ".join(names))
            key = ec.generate_private_key(ec.SECP256R1())
            key_pem = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            chain, method = await asyncio.wait_for(
                asyncio.to_thread(self._obtain, names, key_pem), ISSUE_TIMEOUT)
            await self.store.save_certificate(LOCK_NAME, chain.decode(), key_pem.decode())
            stored = await self.store.load_certificate(LOCK_NAME)
            self._loaded_at = stored.updated_at if stored else self.clock()
            await self.install(chain, key_pem)
        finally:
            self._forget_challenges()
            await self.store.release_cert_lock(LOCK_NAME, self.holder)
        return f"obtained a certificate for {len(names)} names ({method})"

    async def install(self, chain: bytes, key_pem: bytes) -> None:
        """Write certificate and key (0600) and swap them into every live context."""
        s = self.settings
        await asyncio.to_thread(self._write_files, s.cert_path, s.key_path, chain, key_pem)
        for ctx in self.contexts():
            reload_context(ctx, s.cert_path, s.key_path)
        cert = read_cert(s.cert_path)
        if cert is not None:
            metrics.CERT_EXPIRY.set(cert.not_valid_after_utc.timestamp())

    @staticmethod
    def _write_files(cert_path: Path, key_path: Path, chain: bytes, key_pem: bytes) -> None:
        # key first: a reader pairing a new certificate with the old key would fail
        write_private(key_path, key_pem)
        write_private(cert_path, chain)

    # --- the ACME protocol (in a thread) -------------------------------------------------
    def _account_key(self) -> Any:
        import josepy as jose

        path = self.settings.acme_dir / "account.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        return jose.JWKRSA(key=key)

    def _obtain(self, names: list[str], key_pem: bytes) -> tuple[bytes, str]:
        """(full chain PEM, the challenge type that validated). Tries the challenge types
        of ``acme_methods`` in order, each with a new order: an HTTP-01 that fails
        because port 80 is unreachable is followed by TLS-ALPN-01 on port 443."""
        from acme import client, errors, messages

        t = self.settings.tls
        jwk = self._account_key()
        verify: Any = t.acme_ca_file or True
        net = client.ClientNetwork(jwk, verify_ssl=verify, user_agent="mailstack")
        directory = client.ClientV2.get_directory(t.acme_directory_url, net)
        acme = client.ClientV2(directory, net=net)
        contact = (f"mailto:{t.acme_contact}",) if t.acme_contact else ()
        try:
            acme.new_account(messages.NewRegistration.from_data(
                email=t.acme_contact or None, terms_of_service_agreed=True))
        except errors.ConflictError as exc:  # the key has an account already
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration(contact=contact))
        methods = acme_methods(self.settings)
        failures: list[str] = []
        for method in methods:
            try:
                return self._order(acme, jwk, names, key_pem, method), method
            except (errors.Error, RuntimeError) as exc:
                log.warning("acme: %s validation failed: %s", method, exc)
                failures.append(f"{method}: {exc}")
            finally:
                self._forget_challenges()
        raise RuntimeError("no challenge type validated: " + "; ".join(failures))

    def _order(self, acme: Any, jwk: Any, names: list[str], key_pem: bytes,
               method: str) -> bytes:
        import josepy as jose
        from acme import crypto_util, messages
        from cryptography.hazmat.primitives import hashes

        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            name = authz.body.identifier.value
            challb = next((c for c in authz.body.challenges
                           if c.chall.to_partial_json().get("type") == method), None)
            if challb is None:
                raise RuntimeError(f"no {method} challenge offered for {name}")
            if method == "http-01":
                response, validation = challb.response_and_validation(jwk)
                self.challenges[challb.chall.encode("token")] = validation
            else:  # RFC 8737 §3 (the acme library no longer knows this type)
                token = str(challb.chall.to_partial_json()["token"])
                thumbprint = jose.b64encode(jwk.public_key().thumbprint(
                    hash_function=hashes.SHA256)).decode()
                key_authorization = f"{token}.{thumbprint}"
                self.alpn[name.lower()] = key_authorization
                self._alpn_names.add(name.lower())
                response = _tls_alpn_response(key_authorization)
            acme.answer_challenge(challb, response)
        deadline = dt.datetime.now() + dt.timedelta(seconds=ISSUE_TIMEOUT / 2 - 30)
        order = acme.poll_and_finalize(order, deadline)
        return str(order.fullchain_pem).encode()

    def _forget_challenges(self) -> None:
        for token in [t for t, v in self.challenges.items() if v.startswith(t + ".")]:
            self.challenges.pop(token, None)
        for name in self._alpn_names:
            self.alpn.pop(name, None)
        self._alpn_names.clear()


def _tls_alpn_response(key_authorization: str) -> Any:
    """The answer to a tls-alpn-01 challenge. It is sent as an empty JSON object
    (RFC 8555 §7.5.1): the library drops the key authorization from the payload, and
    the field keeps the object non-empty (an empty one would go out as POST-as-GET)."""
    from acme import challenges

    class TlsAlpn01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    return TlsAlpn01Response(key_authorization=key_authorization)
