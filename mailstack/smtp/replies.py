"""Reply texts and RFC 3463 enhanced status codes for every SMTP reply.

RFC 2034 §3: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply carries
an enhanced code, except the greeting and the EHLO/HELO reply. Our own replies name
their code explicitly; ``with_enhanced`` adds a fitting default to any reply that
reaches the wire without one (aiosmtpd's built-in texts), so none is ever bare.
Reply texts never contain controls: anything the client sent that we echo back is
sanitised first (no CRLF injection into our replies).
"""

from __future__ import annotations

import re

from ..store.base import InsufficientStorage

_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_STATUS = re.compile(r"(\d{3})([ -])(.*)\Z", re.DOTALL)

# Defaults by basic code (RFC 3463 §3; RFC 5321 §4.2.2 meanings).
DEFAULT_ENHANCED = {
    "421": "4.3.2", "450": "4.7.1", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.1.1", "552": "5.3.4",
    "553": "5.1.3", "554": "5.7.0", "555": "5.5.4",
}

GREETING_IDENT = "ESMTP mailstack"
OK = "250 2.0.0 OK"
BYE = "221 2.0.0 Bye"
SHUTDOWN = "421 4.3.2 Server shutting down, try again later"
TIMEOUT = "421 4.4.2 Timeout, closing connection"
STARTTLS_READY = "220 2.0.0 Ready to start TLS"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
TLS_ACTIVE = "503 5.5.1 TLS already active"
TLS_UNAVAILABLE = "454 4.7.0 TLS not available on this port"
NEED_EHLO = "503 5.5.1 Send EHLO first"
NEED_MAIL = "503 5.5.1 Need MAIL command first"
NEED_RCPT = "503 5.5.1 Need RCPT command first"
NESTED_MAIL = "503 5.5.1 Sender already given (nested MAIL command)"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_ENCRYPTION = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_ALREADY = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
AUTH_MECHANISM = "504 5.5.4 Unrecognized authentication mechanism"
AUTH_ABORTED = "501 5.0.0 Authentication aborted"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_MALFORMED = "501 5.5.2 Malformed authentication response"
CREDENTIALS_CHANGED = "421 4.7.0 Credentials changed; log in again"
AUTH_TOO_MANY = "421 4.7.0 Too many failed authentication attempts, closing connection"
DATA_START = "354 End data with <CR><LF>.<CR><LF>"
DATA_AFTER_BDAT = "503 5.5.1 DATA not allowed after BDAT in the same transaction"
TEMP_FAILURE = "451 4.3.0 Temporary failure storing the message, try again later"
# RFC 3463 §3.4 X.3.1 "mail system full"; RFC 5321 §4.2.2 452 "insufficient system storage"
NO_STORAGE = "452 4.3.1 Insufficient system storage, try again later"


def store_failure(exc: Exception) -> str:
    """The reply for a store failure: disk full is 452 4.3.1, anything else 451 4.3.0
    (docs/behaviour.md §12)."""
    return NO_STORAGE if isinstance(exc, InsufficientStorage) else TEMP_FAILURE
LINE_TOO_LONG = "500 5.5.2 Line too long"


def sanitize(text: str) -> str:
    """Replace controls (CR, LF, NUL, ...) so a reply stays one line per element."""
    return "".join(c if c.isprintable() or c == " " else "?" for c in text)


def with_enhanced(status: str) -> str:
    """``status`` with an RFC 3463 code added after the basic code if it lacks one."""
    m = _STATUS.match(status)
    if m is None:
        return status
    code, sep, text = m.groups()
    if code[0] not in "245" or _HAS_ENHANCED.match(text):
        return status
    enhanced = DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{sep}{enhanced} {text}".rstrip()
