"""The systemd unit in contrib/ (README "Running in production"): its own user, only the
capability to bind the mail ports, a read-only system but the data directory, restart on
failure; and systemd itself accepts it (``systemd-analyze verify``, when installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "mailstack.service"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_confines_the_server() -> None:
    d = directives()
    assert d["User"] == ["mailstack"] and d["Group"] == ["mailstack"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == d["WorkingDirectory"] == ["/var/lib/mailstack"]
    assert d["Restart"] == ["on-failure"]
    assert any(cmd.endswith("mailstack serve") for cmd in d["ExecStart"])
    assert d["Environment"] == ["MAILSTACK_CONFIG=/etc/mailstack/mailstack.toml"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the program paths of an installation that does not exist here
    unit = tmp_path / "mailstack.service"
    unit.write_text(UNIT.read_text().replace("/opt/mailstack/bin/mailstack", "/bin/true"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "mailstack.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
