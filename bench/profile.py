"""Profile the mailstack process under one benchmark's load with py-spy (sampling, no
code change): starts mailstack, runs the load, records ``py-spy record --format raw``
(collapsed stacks) for the load's duration and prints the functions with the most
samples, self and inclusive.

    pip install py-spy
    python -m bench.profile smtp [--server mailstack-sqlite] [--duration 8]
    python -m bench.profile imap [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from .clients import Imap
from .common import ARGON2_FAST, DOMAIN, PASSWORD, make_dataset
from .imap_mixed import client_loop
from .servers import serve
from .smtp_throughput import run_cell


def summarize(raw: Path, top: int = 25) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        if frames:
            self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"{total} samples", "", "self:"]
    out += [f"{c * 100 / max(total, 1):5.1f}%  {f}" for f, c in self_c.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{c * 100 / max(total, 1):5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


async def run(kind: str, server: str, duration: float, out: Path, gil: bool = False) -> None:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not installed: pip install py-spy")
    ds = make_dataset(50, msgs_per_user=200 if kind == "imap" else 0,
                      hash_profile=ARGON2_FAST)
    async with serve(server, ds, protocols={"smtp" if kind == "smtp" else "imap"},
                     argon2=ARGON2_FAST) as srv:
        pid = srv.pids()[0]
        spy = await asyncio.to_thread(
            subprocess.Popen, ["py-spy", "record", "-p", str(pid), "-d",
                               str(int(duration) + 1), "-r", "200", "--format", "raw",
                               "-o", str(out), "--nonblocking", "--nolineno",
                               *(["--gil"] if gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kind == "smtp":
            cell = await run_cell(srv.ports["smtp"], "mx", 10, 4096, duration, ds.users,
                                  "profile")
            print(f"{cell['count'] / cell['elapsed']:.1f} msgs/s during the profile")
        else:
            clients = []
            for i in range(10):
                c = await Imap.connect(srv.ports["imap"])
                await c.login(f"{ds.users[i]}@{DOMAIN}", PASSWORD)
                clients.append(c)
            lat: dict[str, list[float]] = defaultdict(list)
            start = time.perf_counter()
            counts = await asyncio.gather(*(client_loop(c, start + duration,
                                                        random.Random(i), lat, [])
                                            for i, c in enumerate(clients)))
            print(f"{sum(counts) / (time.perf_counter() - start):.1f} ops/s during the "
                  "profile")
        await asyncio.to_thread(spy.wait, duration + 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["smtp", "imap"])
    ap.add_argument("--server", default="mailstack-sqlite")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--out", default="")
    ap.add_argument("--gil", action="store_true",
                    help="only samples of the thread holding the GIL (what a GIL-bound "
                         "process spends its one core on)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mktemp(prefix=f"profile-{a.kind}-", suffix=".txt"))
    asyncio.run(run(a.kind, a.server, a.duration, out, a.gil))
    print(f"raw stacks: {out}")
    print(summarize(out))


if __name__ == "__main__":
    main()
