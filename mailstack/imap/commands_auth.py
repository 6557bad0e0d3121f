"""Commands valid in any state, and the not-authenticated ones (RFC 9051 §6.1, §6.2).

Invariants:
- No password is accepted where ``may_send_password`` says no: LOGIN and AUTHENTICATE
  answer ``NO [PRIVACYREQUIRED]`` and CAPABILITY shows LOGINDISABLED (RFC 9051 §6.2.3).
- Unknown address and wrong password get the same ``NO [AUTHENTICATIONFAILED]``
  (the policy layer spends the same Argon2 work on both); throttled: ``NO [UNAVAILABLE]``.
- STARTTLS discards pipelined plaintext (``Conn.start_tls``) and resets the session's
  state (RFC 9051 §6.2.1): the client must ask for CAPABILITY again.
"""

from __future__ import annotations

from mailstack import __version__ as VERSION
from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.parser import ParseError, parse_sasl_response
from mailstack.imap.session import ANSWERED, LOGOUT, Session


async def capability(s: Session, c: t.Capability) -> str | None:
    s.send(respond.untagged("CAPABILITY " + s.capabilities()))
    return None


async def noop(s: Session, c: t.Command) -> str | None:
    return None  # pending updates are flushed by the dispatcher (RFC 9051 §6.1.2)


async def logout(s: Session, c: t.Logout) -> str | None:
    s.send(respond.untagged("BYE Logging out"))  # RFC 9051 §6.1.3
    s.state = LOGOUT
    return None


async def id_(s: Session, c: t.Id) -> str | None:
    s.send(b'* ID ("name" "mailstack" "version" ' + respond.string(VERSION) + b")\r\n")
    return None


async def starttls(s: Session, c: t.StartTLS) -> str | None:
    if s.listener.tls != "starttls" or s.conn.tls or s.services.server_ssl is None:
        raise respond.Bad("STARTTLS not available")
    s.send(respond.tagged(c.tag, "OK", "Begin TLS negotiation now"))
    await s.conn.start_tls(s.services.server_ssl)  # discards pipelined plaintext
    s.reader.reset()
    s.enabled.clear()
    return ANSWERED


async def _auth(s: Session, username: str, password: str, authzid: str | None) -> str:
    if not s.may_send_password():
        raise respond.No("Use STARTTLS first", "PRIVACYREQUIRED")
    res = await s.services.auth.authenticate(username, password, client_ip=s.conn.client_ip,
                                             protocol="imap", authzid=authzid)
    if res.status == "refused":
        raise respond.No(res.refusal_text(), "UNAVAILABLE")
    if not res.ok:
        raise respond.No("Authentication failed", "AUTHENTICATIONFAILED")
    await s.logged_in(res.address_id, res.email, res.credential_epoch, res.credential)
    return f"[CAPABILITY {s.capabilities()}] Logged in"


async def login(s: Session, c: t.Login) -> str | None:
    return await _auth(s, c.userid, c.password, None)


async def authenticate(s: Session, c: t.Authenticate) -> str | None:
    if c.mechanism != "PLAIN":
        raise respond.No(f"Unsupported mechanism {c.mechanism}", "CANNOT")
    if not s.may_send_password():
        raise respond.No("Use STARTTLS first", "PRIVACYREQUIRED")
    data = c.initial_response
    if data is None:
        s.send(b"+ \r\n")  # RFC 9051 §6.2.2: empty challenge
        await s.conn.drain()
        line = await s.read_line()
        try:
            data = parse_sasl_response(line)
        except ParseError:
            raise respond.Bad("Malformed base64") from None
        if data is None:
            raise respond.Bad("Authentication cancelled")
    parts = data.split(b"\x00")
    if len(parts) != 3:
        raise respond.No("Authentication failed", "AUTHENTICATIONFAILED")
    try:
        authzid, user, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise respond.No("Authentication failed", "AUTHENTICATIONFAILED") from None
    return await _auth(s, user, password, authzid or None)


ENABLE_NAMES = {"IMAP4REV2": "IMAP4rev2", "UTF8=ACCEPT": "UTF8=ACCEPT",
                "CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC"}


async def enable(s: Session, c: t.Enable) -> str | None:
    """RFC 5161; IMAP4rev2 (RFC 9051 §6.3.1), UTF8=ACCEPT (RFC 6855 §3), CONDSTORE and
    QRESYNC (RFC 7162 §3.1, §3.2.3: QRESYNC implies CONDSTORE). Only what was not
    enabled before is listed in the ENABLED response."""
    done: list[str] = []
    for cap in c.capabilities:
        name = ENABLE_NAMES.get(cap.upper())
        if name is None or cap.upper() in s.enabled:
            continue
        s.enabled.add(cap.upper())
        done.append(name)
    if "UTF8=ACCEPT" in s.enabled:
        s.reader.utf8 = True
    if "QRESYNC" in s.enabled:
        s.enable_condstore()
    s.send(respond.untagged(("ENABLED " + " ".join(done)).rstrip()))
    return None


async def compress(s: Session, c: t.Compress) -> str | None:
    """RFC 4978 §3: DEFLATE after authentication; once only (NO [COMPRESSIONACTIVE]).
    The tagged OK goes out uncompressed, everything after it compressed."""
    from mailstack.imap import compress as deflate

    if c.mechanism != "DEFLATE":
        raise respond.Bad(f"Unknown compression mechanism {c.mechanism}")
    if s.compressed:
        raise respond.No("Compression is already active", "COMPRESSIONACTIVE")
    s.send(respond.tagged(c.tag, "OK", "DEFLATE active"))
    await s.conn.drain()
    deflate.start(s.conn, max(deflate.CHUNK, s.settings.imap.max_line_length + 2))
    s.compressed = True
    return ANSWERED


async def namespace(s: Session, c: t.Namespace) -> str | None:
    s.send(respond.untagged('NAMESPACE (("" "/")) NIL NIL'))  # RFC 2342, one personal ns
    return None

