"""``host:port`` as written in the transport map (IPv6 literals in brackets)."""

from __future__ import annotations


def parse_host_port(value: str, default_port: int = 25) -> tuple[str, int]:
    """``"mx.example:2525"`` -> ("mx.example", 2525); ``"[::1]:25"`` -> ("::1", 25);
    ``"host"`` -> ("host", default_port). Raises ValueError with the reason."""
    text = value.strip()
    if not text or any(c in text for c in " \t\r\n/@"):
        raise ValueError("must be host:port")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError("an IPv6 address must be written [address]:port")
        if rest and not rest.startswith(":"):
            raise ValueError("must be [address]:port")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ValueError("an IPv6 address must be written [address]:port")
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host.lower().rstrip("."), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port must be a number from 1 to 65535")
    return host.lower().rstrip("."), int(port_text)
