"""Two-factor codes (RFC 6238 TOTP: HMAC-SHA1, 6 digits, 30-second steps) and emergency
codes, as pure functions: the time comes in as a parameter.

- RFC 6238 §5.2: a code of the current step, the one before or the one after is
  accepted (clock drift of one step), and a code is accepted once only: the caller
  stores the step of the last accepted code and passes it as ``last_step``; a code of
  that step or an earlier one is refused (so is a later code of an already used step).
- Emergency codes are random (12 characters from a 32-letter alphabet: 60 bits), shown
  once, stored as SHA-256 (the entropy makes a slow hash unnecessary), each usable once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pyotp

STEP_SECONDS = 30  # RFC 6238 §5.2 recommends 30 s
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one
EMERGENCY_CODES = 10
_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def new_secret() -> str:
    """A base32 secret of 160 bits (RFC 4226 §4 recommends 160)."""
    return pyotp.random_base32(32)


def step_at(now: float) -> int:
    return int(now // STEP_SECONDS)


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def matching_step(secret: str, code: str, now: float, last_step: int) -> int | None:
    """The time step ``code`` belongs to, if it is valid now (±``WINDOW`` steps) and
    newer than ``last_step``; else None."""
    code = "".join(code.split())
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    current = step_at(now)
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        # compare every candidate (no early exit): the time taken tells nothing
        if hmac.compare_digest(code_at(secret, step), code) and step > last_step:
            found = step
    return found


def provisioning_uri(secret: str, login: str, issuer: str) -> str:
    """The otpauth:// URI authenticator apps read from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=login, issuer_name=issuer)


def new_emergency_codes(n: int = EMERGENCY_CODES) -> list[str]:
    """``n`` codes written ``xxxx-xxxx-xxxx``."""
    out = []
    for _ in range(n):
        raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
        out.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return out


def normalize_emergency_code(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


def looks_like_emergency_code(code: str) -> bool:
    norm = normalize_emergency_code(code)
    return len(norm) == 12 and all(c in _CODE_ALPHABET for c in norm)


def hash_emergency_code(code: str) -> str:
    return hashlib.sha256(normalize_emergency_code(code).encode()).hexdigest()
