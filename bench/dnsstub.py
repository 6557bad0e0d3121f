"""A loopback DNS responder for benchmarks that turn on inbound sender checks.

Answers, authoritatively and from memory, what the MX checks of the bench's external
sender ask: SPF and DMARC TXT records of ``remote.test``, the PTR of 127.0.0.1 and the
A record of its name; NXDOMAIN for everything else (DKIM keys of unsigned mail are never
asked). It listens on 127.0.0.1 only and runs in its own thread, so answering costs the
load generator's event loop nothing and no bench query ever leaves loopback.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ZONE = {
    ("remote.test.", "TXT"): ['"v=spf1 ip4:127.0.0.1 -all"'],
    ("_dmarc.remote.test.", "TXT"): ['"v=DMARC1; p=reject"'],
    ("1.0.0.127.in-addr.arpa.", "PTR"): ["localhost."],
    ("localhost.", "A"): ["127.0.0.1"],
}


class DnsStub:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # so the thread sees the stop flag
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, name="dnsstub", daemon=True)
        self._stop = False

    def __enter__(self) -> DnsStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.queries += 1
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            q = query.question[0]
            name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
            texts = ZONE.get((name, rdtype))
            if texts:
                reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, *texts))
            elif not any(n == name for n, _ in ZONE):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            try:
                self.sock.sendto(reply.to_wire(), peer)
            except OSError:
                return
