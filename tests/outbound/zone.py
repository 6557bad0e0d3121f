"""Reading ``mailstack dns`` output as a DNS server would: a zone-file parser
(dnspython), and a dkimpy ``dnsfunc`` that answers from it."""

from __future__ import annotations

from collections.abc import Callable

import dns.name
import dns.rdatatype
import dns.zone


def parse_zone(text: str, origin: str) -> dns.zone.Zone:
    return dns.zone.from_text(text, origin=origin + ".", relativize=False, check_origin=False)


def txt_values(zone: dns.zone.Zone, name: str) -> list[bytes]:
    """Every TXT record at ``name``, its strings joined (RFC 6376 §3.6.2.2)."""
    rdataset = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.TXT)
    if rdataset is None:
        return []
    return [b"".join(r.strings) for r in rdataset]


def dkim_dnsfunc(zone: dns.zone.Zone) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        values = txt_values(zone, name.decode())
        return values[0] if values else None
    return lookup
