"""A real DNSSEC chain on loopback for the transport-security tests (RFC 7672 §2.1).

``DnsRig`` starts two Debian programs as the test's own processes, each with its own
temporary config and state directory, on free loopback ports:

- ``nsd``: the authoritative server for ``test.`` and every child zone a test publishes
  (``dane.test``, ``unsigned.test`` ...). Zones are signed by the rig with
  ``ldns-signzone`` using ECDSA P-256 keys made by ``ldns-keygen``.
- ``unbound``: the validating resolver our code is pointed at. Its only trust anchor is
  the ``test.`` key; a stub-zone sends every ``test.`` query to nsd.

A child zone is published in one of three modes:
- ``signed``: signed, with its DS in ``test.`` -> answers carry the AD bit;
- ``unsigned``: no DS in ``test.`` (an insecure delegation) -> answers without AD;
- ``bogus``: the DS in ``test.`` names one key but the zone is signed with another ->
  unbound answers SERVFAIL.

``publish()`` may be called again for the same zone (new data, another mode): the rig
re-signs, tells nsd to reload and flushes unbound's caches, so the next query sees the new
data. The rig blocks for a few milliseconds per call (subprocesses); tests call it
between cases, not while a server is waiting.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("nsd", "nsd-control", "unbound", "unbound-control", "ldns-signzone",
            "ldns-keygen")
PARENT = "test"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None
            and not Path("/usr/sbin", b).exists()]


def _bin(name: str) -> str:
    found = shutil.which(name)
    return found or str(Path("/usr/sbin", name))


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (nsd and unbound need both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free loopback port")


class RigError(RuntimeError):
    pass


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise RigError(f"{' '.join(args)} failed ({done.returncode}): "
                       f"{done.stdout.strip()} {done.stderr.strip()}")
    return done.stdout


@dataclass
class _Zone:
    name: str
    records: list[str]
    mode: str
    key: str = ""  # key base name whose DS goes in the parent
    wrong_key: str = ""  # for bogus: the key the zone is actually signed with


@dataclass
class DnsRig:
    """See the module docstring. ``resolver`` is (address, port) of unbound."""

    workdir: Path
    nsd_port: int = 0
    unbound_port: int = 0
    zones: dict[str, _Zone] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _holes: list[socket.socket] = field(default_factory=list)
    _parent_key: str = ""
    _serial: int = 0

    @property
    def resolver(self) -> tuple[str, int]:
        return ("127.0.0.1", self.unbound_port)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nsd_port, self.unbound_port = free_port(), free_port()
        while self.unbound_port == self.nsd_port:
            self.unbound_port = free_port()
        self._parent_key = self._keygen(PARENT)
        self._write_parent()
        self._write_nsd_conf()
        self._write_unbound_conf()
        self._spawn([_bin("nsd"), "-d", "-c", str(self.workdir / "nsd.conf")], "nsd")
        self._wait_control(["nsd-control", "-c", str(self.workdir / "nsd.conf"), "status"])
        self._spawn([_bin("unbound"), "-d", "-c", str(self.workdir / "unbound.conf")],
                    "unbound")
        self._wait_control(self._unbound_ctl("status"))

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for hole in self._holes:
            hole.close()
        self._holes.clear()

    def _spawn(self, args: list[str], name: str) -> None:
        log = (self.workdir / f"{name}.out").open("wb")
        proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self._procs.append(proc)

    def _wait_control(self, args: list[str]) -> None:
        deadline = time.monotonic() + 20
        last = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RigError(f"{proc.args!r} exited ({proc.returncode}): "
                                   f"{self.logs()}")
            done = subprocess.run([_bin(args[0]), *args[1:]], capture_output=True,
                                  text=True, timeout=10, check=False)
            if done.returncode == 0:
                return
            last = done.stdout + done.stderr
            time.sleep(0.05)
        raise RigError(f"{args[0]} did not answer: {last} {self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("nsd.out", "nsd.log", "unbound.out", "unbound.log"):
            p = self.workdir / name
            if p.exists():
                parts.append(f"--- {name}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    # --- zones -----------------------------------------------------------------------

    def publish(self, zone: str, records: list[str], mode: str = "signed") -> None:
        """Serve ``zone`` (a child of ``test.``) with ``records`` (zone-file lines
        relative to the zone's origin; SOA and NS are added) in ``mode`` (signed,
        unsigned or bogus). Replaces earlier data for the zone; caches are flushed."""
        zone = zone.rstrip(".").lower()
        if not zone.endswith("." + PARENT) or mode not in ("signed", "unsigned", "bogus"):
            raise ValueError(f"bad zone or mode: {zone} {mode}")
        old = self.zones.get(zone)
        z = _Zone(zone, list(records), mode)
        if mode != "unsigned":
            z.key = old.key if old and old.key else self._keygen(zone)
        if mode == "bogus":
            z.wrong_key = self._keygen(zone)
        self.zones[zone] = z
        self._write_child(z)
        self._write_parent()
        ctl = [_bin("nsd-control"), "-c", str(self.workdir / "nsd.conf")]
        if old is None:
            _run([*ctl, "addzone", zone, "child"], self.workdir)
        _run([*ctl, "reload", zone], self.workdir)
        _run([*ctl, "reload", PARENT], self.workdir)
        self.flush()

    def blackhole(self, zone: str) -> None:
        """Make ``zone`` (a child of ``test.``) time out: unbound sends its queries to a
        loopback UDP socket that reads nothing and answers nothing (a dead or
        unreachable name server), so lookups under it end in a timeout or SERVFAIL."""
        zone = zone.rstrip(".").lower()
        if not zone.endswith("." + PARENT):
            raise ValueError(f"bad zone: {zone}")
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(("127.0.0.1", 0))
        self._holes.append(hole)
        port = hole.getsockname()[1]
        _run(self._unbound_ctl("stub_add", "+i", zone + ".", f"127.0.0.1@{port}"),
             self.workdir)
        self.flush()

    def flush(self) -> None:
        """Empty unbound's caches (answers, keys, negative and bogus data)."""
        for cmd in (["flush_zone", PARENT + "."], ["flush_bogus"], ["flush_negative"],
                    ["flush_infra", "all"], ["flush_requestlist"]):
            _run(self._unbound_ctl(*cmd), self.workdir)

    def _unbound_ctl(self, *cmd: str) -> list[str]:
        return ["unbound-control", "-c", str(self.workdir / "unbound.conf"), *cmd]

    def _keygen(self, zone: str) -> str:
        keys = self.workdir / "keys"
        keys.mkdir(exist_ok=True)
        base = _run([_bin("ldns-keygen"), "-a", "ECDSAP256SHA256", "-k", zone + "."],
                    keys).strip()
        return str(keys / base)

    def _next_serial(self) -> int:
        self._serial += 1
        return int(time.time()) + self._serial

    def _zone_text(self, origin: str, lines: list[str]) -> str:
        head = [
            f"$ORIGIN {origin}.", "$TTL 60",
            f"@ IN SOA ns1.{PARENT}. hostmaster.{PARENT}. {self._next_serial()} "
            "3600 600 86400 60",
            f"@ IN NS ns1.{PARENT}.",
        ]
        return "\n".join(head + lines) + "\n"

    def _sign(self, path: Path, origin: str, key: str) -> None:
        # Valid from an hour ago for a week: unaffected by small clock differences.
        now = time.gmtime(time.time() - 3600)
        later = time.gmtime(time.time() + 7 * 86400)
        _run([_bin("ldns-signzone"), "-o", origin + ".", "-i",
              time.strftime("%Y%m%d%H%M%S", now), "-e", time.strftime("%Y%m%d%H%M%S", later),
              "-f", str(path) + ".signed", str(path), key], self.workdir)

    def _write_child(self, z: _Zone) -> None:
        path = self.workdir / f"{z.name}.zone"
        path.write_text(self._zone_text(z.name, z.records))
        if z.mode == "unsigned":
            shutil.copy(path, str(path) + ".signed")
        else:
            self._sign(path, z.name, z.wrong_key or z.key)

    def _write_parent(self) -> None:
        lines = ["ns1 IN A 127.0.0.1"]
        for z in self.zones.values():
            label = z.name[: -len(PARENT) - 1]
            lines.append(f"{label} IN NS ns1.{PARENT}.")
            if z.mode != "unsigned":
                ds = Path(z.key + ".ds").read_text().split()
                # "<owner> <class> DS ..." possibly with a TTL: keep from DS on.
                lines.append(f"{label} IN " + " ".join(ds[ds.index("DS"):]))
        path = self.workdir / f"{PARENT}.zone"
        path.write_text(self._zone_text(PARENT, lines))
        self._sign(path, PARENT, self._parent_key)

    def _write_nsd_conf(self) -> None:
        d = self.workdir
        (d / "nsd.conf").write_text(f"""
server:
    ip-address: 127.0.0.1@{self.nsd_port}
    port: {self.nsd_port}
    do-ip6: no
    server-count: 1
    reuseport: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    verbosity: 1
    hide-version: yes
remote-control:
    control-enable: yes
    control-interface: "{d}/nsd.ctl"
pattern:
    name: "child"
    zonefile: "%s.zone.signed"
zone:
    name: "{PARENT}"
    zonefile: "{PARENT}.zone.signed"
""")

    def _write_unbound_conf(self) -> None:
        d = self.workdir
        anchor = Path(self._parent_key + ".key").read_text().split(";")[0].strip()
        (d / "unbound.conf").write_text(f"""
server:
    interface: 127.0.0.1@{self.unbound_port}
    port: {self.unbound_port}
    do-ip6: no
    num-threads: 1
    so-reuseport: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: "{d}/unbound.log"
    verbosity: 1
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor: "{anchor}"
    local-zone: "{PARENT}." nodefault
    aggressive-nsec: no
    qname-minimisation: no
    serve-expired: no
    harden-dnssec-stripped: yes
stub-zone:
    name: "{PARENT}."
    stub-addr: 127.0.0.1@{self.nsd_port}
remote-control:
    control-enable: yes
    control-interface: "{d}/unbound.ctl"
    control-use-cert: no
""")


@contextlib.contextmanager
def running_rig(workdir: Path) -> Iterator[DnsRig]:
    rig = DnsRig(workdir)
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="session")
def dns_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsRig]:
    """One nsd + unbound pair per test session (per xdist worker). Outside CI a missing
    binary skips, saying which and how to get it; in CI (``CI=true``) it fails."""
    missing = missing_binaries()
    if missing:
        reason = (f"DNSSEC rig needs {', '.join(missing)} "
                  "(apt-get install nsd unbound ldnsutils; scripts/test does it)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the DNSSEC tests)")
        pytest.skip(reason)
    with running_rig(tmp_path_factory.mktemp("dnsrig")) as rig:
        yield rig
