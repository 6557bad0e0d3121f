"""mailstack.pop3: the POP3 server (RFC 1939, 2449, 2595, 5034) on 995 and 110."""

from __future__ import annotations

from ..config import ListenerSettings
from ..services import Services
from .server import Pop3Server


def build(services: Services, name: str, role: str,
          listener_settings: ListenerSettings) -> Pop3Server:
    return Pop3Server(services, name, role, listener_settings)


__all__ = ["Pop3Server", "build"]
