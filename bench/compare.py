"""Run one benchmark on two commits back to back and print the ratio of every figure.

    python -m bench.compare REV_A REV_B [--rounds 3] [--only METRIC,...] -- \\
        mailbox_size --sizes 10000 --servers mailstack-sqlite

Each commit's tree is extracted (``git archive``) into a temporary directory; by default
the CURRENT ``bench/`` directory is copied over both, so the same load generator and the
same server runner drive both versions of the server code (``--own-harness`` keeps each
commit's own ``bench/``). The benchmark then runs alternately, A B A B ... for
``--rounds`` rounds, so a machine that drifts in speed affects both sides alike. Every
figure of the benchmark's JSON output (bench, case, metric, server) is reduced to its
median over the rounds and printed as A, B and B/A; a row whose change goes the wrong
way by more than ``--threshold`` (default 10 %) is marked ``WORSE`` and the exit status
is 1, so the command can gate a change to a hot path.

Use it on every change to a hot path (store, FETCH, SEARCH, DATA, delivery) and quote
its table in the commit or the closing note.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

Key = tuple[str, str, str, str]  # bench, case, metric, server


def extract(rev: str, dest: Path, harness: bool) -> str:
    """Extract ``rev``'s tree into ``dest``; returns its short commit id."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                         check=True, capture_output=True, text=True).stdout.strip()
    data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    if harness:
        shutil.rmtree(dest / "bench", ignore_errors=True)
        shutil.copytree(REPO / "bench", dest / "bench",
                        ignore=shutil.ignore_patterns("results", "__pycache__"))
    (dest / "bench" / "results").mkdir(exist_ok=True)
    return sha


def run_once(tree: Path, module: str, args: list[str], out: Path) -> dict[Key, Any]:
    """One run of ``python -m bench.MODULE ARGS`` inside ``tree``; its JSON rows."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [os.path.abspath(sys.executable), "-m", f"bench.{module}", *args, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench.compare: {' '.join(cmd)} failed in {tree} "
                         f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = json.loads(out.read_text())["rows"]
    return {(r["bench"], r["case"], r["metric"], r["server"]): r for r in rows
            if r.get("value") is not None}


def compare(a: dict[Key, list[float]], b: dict[Key, list[float]], better: dict[Key, str],
            threshold: float, only: list[str]) -> tuple[list[list[str]], bool]:
    lines: list[list[str]] = []
    worse = False
    for key in a:
        if key not in b or (only and not any(o in key[2] for o in only)):
            continue
        va, vb = statistics.median(a[key]), statistics.median(b[key])
        ratio = vb / va if va else float("nan")
        bad = (ratio > 1 + threshold) if better[key] == "lower" else (
            ratio < 1 / (1 + threshold))
        worse |= bad
        spread = f"{min(b[key]):.4g}..{max(b[key]):.4g}"
        lines.append([key[1], key[2], key[3], f"{va:.4g}", f"{vb:.4g}", f"{ratio:.2f}x",
                      spread, "WORSE" if bad else ""])
    return lines, worse


def render(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.compare REV_A REV_B [options] -- "
                         "BENCH_MODULE [ARGS...]  (see --help)" if "-h" not in argv
                         and "--help" not in argv else __doc__)
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev_a")
    ap.add_argument("rev_b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list: keep metrics containing these")
    ap.add_argument("--threshold", type=float, default=0.10)
    ap.add_argument("--own-harness", action="store_true",
                    help="run each commit's own bench/ instead of the current one")
    a = ap.parse_args(argv[:cut])
    module, *bench_args = argv[cut + 1:]
    only = [o for o in a.only.split(",") if o]
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = [Path(tmp) / "a", Path(tmp) / "b"]
        shas = [extract(rev, tree, not a.own_harness)
                for rev, tree in zip((a.rev_a, a.rev_b), trees, strict=True)]
        values: list[dict[Key, list[float]]] = [{}, {}]
        better: dict[Key, str] = {}
        for rnd in range(a.rounds):
            for side in (0, 1):
                rows = run_once(trees[side], module, bench_args,
                                Path(tmp) / f"{side}-{rnd}.json")
                for key, row in rows.items():
                    values[side].setdefault(key, []).append(float(row["value"]))
                    better[key] = row.get("better", "higher")
                print(f"round {rnd + 1}/{a.rounds}: {shas[side]} done", file=sys.stderr)
    lines, worse = compare(values[0], values[1], better, a.threshold, only)
    print(f"A = {a.rev_a} ({shas[0]}), B = {a.rev_b} ({shas[1]}); "
          f"median of {a.rounds} alternating rounds; ratio = B/A")
    print(render(["case", "metric", "server", "A", "B", "B/A", "B min..max", ""], lines))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
