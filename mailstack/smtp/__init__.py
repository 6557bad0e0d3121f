"""mailstack.smtp: the SMTP front-end (MX on 25, submission on 465/587).

Modules: ``server`` (listeners, shutdown), ``protocol`` (one session: commands and
their per-state rules), ``data`` (smuggling-safe DATA reading), ``delivery`` (durable
acceptance), ``directory`` (the store behind the policy's narrow interfaces),
``replies`` (reply texts, RFC 3463 codes).
"""

from __future__ import annotations

from ..config import ListenerSettings
from ..services import Services
from .server import SmtpFrontEnd

__all__ = ["SmtpFrontEnd", "build"]


def build(services: Services, name: str, role: str,
          listener_settings: ListenerSettings) -> SmtpFrontEnd:
    """The app root's entry point (``mailstack.app.FRONTENDS``)."""
    return SmtpFrontEnd(services, name, role, listener_settings)
