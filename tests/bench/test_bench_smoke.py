"""Smoke mode of the benchmark harness (bench/): runs every benchmark with tiny sizes so
the scripts do not rot. No figure is asserted (speed is never a test); what is checked is
that each row has a figure or says why not: the aiosmtpd sink always runs, mailstack rows
run when the front-end exists, peer rows are skipped with a reason when Postfix/Dovecot
are not installed (this test never installs them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import Results, ratios, table
from bench.peers import dovecot_missing, postfix_missing

REPO = Path(__file__).resolve().parents[2]


def test_ratio_is_mailstack_over_peer_of_same_case() -> None:
    res = Results()
    res.add("smtp", "c=1", "msgs/s", "postfix", 200.0)
    res.add("smtp", "c=1", "msgs/s", "mailstack-sqlite", 100.0)
    res.add("smtp", "c=1 sub", "msgs/s", "mailstack-sqlite", 50.0, peer_case="c=1")
    res.add("smtp", "c=1", "msgs/s", "aiosmtpd-sink", 400.0)
    res.skip("smtp", "c=1", "mailstack-pg", "not available yet")
    by = {(d["server"], d["case"]): d for d in ratios(res.rows)}
    assert by[("mailstack-sqlite", "c=1")]["ratio"] == 0.5
    assert by[("mailstack-sqlite", "c=1 sub")]["ratio"] == 0.25
    assert by[("aiosmtpd-sink", "c=1")]["ratio"] is None
    assert by[("mailstack-pg", "c=1")]["value"] is None
    text = table(res.rows)
    assert "0.50x" in text and "not available yet" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_all(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--smoke", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows
    benches = {r["bench"] for r in rows}
    assert benches == {"smtp", "imap_mixed", "imap_stress", "pop3", "mailbox_size", "idle",
                       "login_storm"}

    sink = [r for r in rows if r["server"] == "aiosmtpd-sink" and r["metric"] == "msgs/s"]
    assert sink and all(r["value"] and r["value"] > 0 and not r["note"] for r in sink)

    for r in rows:
        if r["value"] is None:  # a skipped row always says why
            assert r["note"], r
        if r["server"].startswith("mailstack") and r["value"] is None:
            assert "not available yet" in r["note"] or "does not import" in r["note"], r
        if r["metric"] in ("msgs/s", "ops/s") and r["value"] is not None:
            assert "error" not in r["note"], r  # every message/command succeeded
        if r["metric"] == "inconsistencies" and r["value"] is not None:
            assert r["value"] == 0, r  # the stress mix saw what the server said
    peers = {"postfix": postfix_missing(), "dovecot": dovecot_missing()}
    for r in rows:
        if r["server"] in peers:
            if peers[r["server"]]:
                assert r["value"] is None and r["note"] == peers[r["server"]], r
            else:
                assert r["value"] is not None, r
