"""The source side of an import: an IMAP client session on the other provider's server.

Built on the standard library's ``imaplib`` and run in a worker thread, one call per
round trip (``asyncio.to_thread``), so the event loop never waits on the network.
Why not aioimaplib (which the project first planned): its 2.0 release has no STARTTLS,
which many providers' port 143 needs, and it hands FETCH literals back in a shape that
has to be re-parsed anyway; imaplib does both, and a thread per running job is cheap
next to the jobs-at-once cap.

Every failure becomes a :class:`SourceError` saying whether trying again can help:
- permanent (the job fails at once with the message): the host cannot be reached or
  resolved, TLS fails (certificate, protocol), the login is refused;
- temporary (the runner reconnects with backoff and resumes): the connection dropped or
  timed out during the session.
Memory: a FETCH answer holds at most one planned batch (``plan.batches``).
"""

from __future__ import annotations

import imaplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from . import plan

TLS_MODES = ("implicit", "starttls", "none")


class SourceError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SourceSpec:
    host: str
    port: int
    tls: str  # implicit | starttls | none
    username: str
    password: str
    timeout: float = 120.0
    cafile: str | None = None  # extra trust anchors (tests, private PKIs)


@dataclass(frozen=True)
class Selected:
    uidvalidity: int
    exists: int


def _context(spec: SourceSpec) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=spec.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Source:
    """One logged-in session. Methods block: call them through ``asyncio.to_thread``."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.imap: imaplib.IMAP4 | None = None

    # --- connect -----------------------------------------------------------------
    def connect(self) -> None:
        s = self.spec
        where = f"{s.host}:{s.port}"
        try:
            if s.tls == "implicit":
                self.imap = imaplib.IMAP4_SSL(s.host, s.port, ssl_context=_context(s),
                                              timeout=s.timeout)
            else:
                self.imap = imaplib.IMAP4(s.host, s.port, timeout=s.timeout)
                if s.tls == "starttls":
                    if "STARTTLS" not in self.imap.capabilities:
                        raise SourceError(f"{where} does not offer STARTTLS",
                                          permanent=True)
                    self.imap.starttls(_context(s))
        except SourceError:
            self.close()
            raise
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise SourceError(f"TLS with {where} failed: the certificate is not valid "
                              f"for {s.host} ({exc.verify_message})", permanent=True) from exc
        except ssl.SSLError as exc:
            self.close()
            raise SourceError(f"TLS with {where} failed: {exc.reason or exc}",
                              permanent=True) from exc
        except socket.gaierror as exc:
            raise SourceError(f"cannot resolve {s.host}: {exc.strerror}",
                              permanent=True) from exc
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise SourceError(f"cannot reach {where}: {exc.strerror or exc}",
                              permanent=True) from exc
        except imaplib.IMAP4.error as exc:
            self.close()
            raise SourceError(f"{where} is not an IMAP server we can use: {exc}",
                              permanent=True) from exc
        try:
            self.imap.login(s.username, s.password)
        except imaplib.IMAP4.abort as exc:
            self.close()
            raise SourceError(f"{where} dropped the connection at login: {exc}",
                              permanent=False) from exc
        except imaplib.IMAP4.error as exc:
            self.close()
            raise SourceError(f"{where} refused the user name or password for "
                              f"{s.username} ({_text(exc)})", permanent=True) from exc
        except OSError as exc:
            self.close()
            raise SourceError(f"{where}: connection lost at login: {exc}",
                              permanent=False) from exc

    def close(self) -> None:
        imap, self.imap = self.imap, None
        if imap is None:
            return
        try:
            imap.logout()
        except Exception:  # already gone: nothing to tell it
            try:
                imap.shutdown()
            except Exception:
                pass

    # --- reading -----------------------------------------------------------------
    def _call(self, what: str, fn: object, *args: object) -> tuple[str, list[object]]:
        assert self.imap is not None and callable(fn)
        try:
            typ, data = fn(*args)
        except imaplib.IMAP4.abort as exc:
            raise SourceError(f"connection dropped during {what}: {exc}",
                              permanent=False) from exc
        except imaplib.IMAP4.error as exc:
            raise SourceError(f"{what} refused: {_text(exc)}", permanent=False) from exc
        except (TimeoutError, OSError) as exc:
            raise SourceError(f"connection lost during {what}: {exc}",
                              permanent=False) from exc
        return typ, list(data)

    def folders(self) -> list[plan.SourceFolder]:
        assert self.imap is not None
        typ, data = self._call("LIST", self.imap.list, '""', "*")
        if typ != "OK":
            raise SourceError(f"LIST failed: {data!r}", permanent=False)
        return plan.parse_list(data)  # type: ignore[arg-type]

    def select(self, folder: plan.SourceFolder) -> Selected:
        assert self.imap is not None
        typ, data = self._call(f"EXAMINE {folder.name}", self.imap.select,
                               plan.quote(folder.raw), True)
        if typ != "OK":
            raise SourceError(f"cannot open folder {folder.name!r} at the source: "
                              f"{_text(data)}", permanent=False)
        exists = _number(data[0] if data else None)
        _, uv = self.imap.response("UIDVALIDITY")
        uidvalidity = _number(uv[0] if uv else None)
        return Selected(uidvalidity, exists)

    def sizes_after(self, last_uid: int) -> list[tuple[int, int]]:
        """(uid, size) of every message with a UID above ``last_uid``, in UID order."""
        assert self.imap is not None
        typ, data = self._call("UID FETCH", self.imap.uid, "FETCH", f"{last_uid + 1}:*",
                               "(UID RFC822.SIZE)")
        if typ != "OK":
            raise SourceError(f"UID FETCH failed: {_text(data)}", permanent=False)
        found = plan.parse_fetch(data)  # type: ignore[arg-type]
        # "n:*" also matches the highest UID when it is below n (RFC 9051 §6.4.8)
        return sorted((f.uid, f.size or 0) for f in found if f.uid > last_uid)

    def fetch(self, uids: Sequence[int]) -> list[plan.Fetched]:
        assert self.imap is not None
        typ, data = self._call("UID FETCH", self.imap.uid, "FETCH", plan.uid_set(uids),
                               "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        if typ != "OK":
            raise SourceError(f"UID FETCH failed: {_text(data)}", permanent=False)
        return plan.parse_fetch(data)  # type: ignore[arg-type]


def _number(x: object) -> int:
    text = x.decode("ascii", "replace") if isinstance(x, bytes) else str(x)
    return int(text) if text.isdigit() else 0


def _text(x: object) -> str:
    if isinstance(x, list | tuple):
        x = b" ".join(i for i in x if isinstance(i, bytes))
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")[:300]
    return str(x)[:300]
