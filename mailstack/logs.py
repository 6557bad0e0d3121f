"""Logging: set-up for every command, and the one line per connection event
(docs/behaviour.md §10).

- ``setup_logging``: one handler on stderr. ``text`` lines are
  ``time LEVEL logger: message``; ``json`` (setting ``logging.format``) writes one JSON
  object per line (``ts``, ``level``, ``logger``, ``msg`` and, for connection events,
  the event's fields) for log shippers.
- aiosmtpd logs every connection, every EOF and a "Connection lost during
  _handle_client()" after each normal QUIT on its logger ``mail.log`` at INFO; that
  chatter is shown only with ``--debug`` (then at DEBUG). Warnings and errors always.
- ``conn_event``: one line per event of a connection (``connect``, ``close``) on the
  logger ``mailstack.conn``: protocol/listener, session id, client address, TLS state,
  login and result. Never a password or message content: the fields are closed.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHATTY = ("mail.log",)  # aiosmtpd
conn_log = logging.getLogger("mailstack.conn")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; connection events carry their fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "conn", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(*, verbose: bool, debug: bool = False, fmt: LogFormat = "text",
                  stream: TextIO | None = None) -> None:
    """Configure the root logger: INFO when ``verbose`` (the server), WARNING otherwise,
    DEBUG everywhere with ``debug``; third-party chatter at WARNING unless ``debug``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def new_session_id() -> str:
    """A short id naming one connection in every line about it."""
    return secrets.token_hex(5)


def conn_event(listener: str, session: str, client: str, event: str, *, tls: str = "",
               login: str = "", result: str = "") -> None:
    """Log one connection event as one line (and as fields in JSON)."""
    if not conn_log.isEnabledFor(logging.INFO):
        return
    fields = {"listener": listener, "session": session, "client": client, "event": event,
              "tls": tls or "none", "login": login or "-", "result": result or "-"}
    conn_log.info(" ".join(f"{k}={_quote(v)}" for k, v in fields.items()),
                  extra={"conn": fields})


def _quote(value: str) -> str:
    """A value safe on one log line: no spaces or control characters unquoted."""
    if value and all(0x21 <= ord(c) < 0x7F and c not in '"=\\' for c in value):
        return value
    return json.dumps(value, ensure_ascii=True)
