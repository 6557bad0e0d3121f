"""The HTTP side (docs/behaviour.md §10, §11): client auto-configuration, the MTA-STS
policy, Prometheus metrics and ACME HTTP-01 challenges, on aiohttp inside our event
loop. ``build`` is the front-end entry point the composition root calls."""

from .server import WebFrontEnd, build

__all__ = ["WebFrontEnd", "build"]
