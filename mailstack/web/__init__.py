"""The HTTP side (docs/behaviour.md §10, §11): client auto-configuration, the MTA-STS
policy, Prometheus metrics and ACME HTTP-01 challenges, on aiohttp inside our event
loop. ``build`` is the front-end entry point the composition root calls (aiohttp is
imported only then, so the command line stays quick)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ListenerSettings
    from ..services import Services
    from .server import WebFrontEnd


def build(services: Services, name: str, role: str, listener: ListenerSettings
          ) -> WebFrontEnd:
    from .server import WebFrontEnd

    return WebFrontEnd(services, name, role, listener)
