"""Run every benchmark in turn, print ONE table and write ONE JSON file (each figure per
server, and for mailstack rows the ratio mailstack / peer of the same case and metric).

    python -m bench.run_all [--json bench-results.json] [--only smtp,imap_mixed,...]
    python -m bench.run_all --smoke      # a few seconds per benchmark, tiny sizes (CI)
    python -m bench.run_all --install-peers   # apt-get install postfix/dovecot first

Defaults finish in about 25 minutes on a 2-core machine (filling the 100k-message
mailboxes of ``mailbox_size`` takes several; ``--skip-100k`` leaves them out). Servers
that cannot run here (peer not installed, a mailstack front-end not written yet,
PostgreSQL down) give a row with the reason instead of a figure.
"""

from __future__ import annotations

import argparse
import time

from . import (
    idle_conns,
    imap_mixed,
    imap_stress,
    login_storm,
    mailbox_size,
    pop3_download,
    smtp_throughput,
)
from .common import Results, machine_meta, table, write_json
from .peers import install_peers

BENCHES = {"smtp": smtp_throughput, "imap_mixed": imap_mixed,
           "imap_stress": imap_stress, "pop3": pop3_download,
           "mailbox_size": mailbox_size, "idle": idle_conns, "login_storm": login_storm}

SMOKE = {
    "smtp": ["--concurrency", "2", "--sizes", "2048", "--duration", "0.5", "--fast-hash",
             "--servers", "postfix,mailstack-sqlite,aiosmtpd-sink"],
    "imap_mixed": ["--clients", "2", "--messages", "20", "--duration", "0.5", "--fast-hash",
                   "--servers", "dovecot,mailstack-sqlite"],
    "mailbox_size": ["--sizes", "50", "--repeat", "1", "--servers",
                     "dovecot,mailstack-sqlite"],
    "imap_stress": ["--clients", "2", "--messages", "20", "--duration", "0.5",
                    "--servers", "dovecot,mailstack-sqlite"],
    "pop3": ["--messages", "20", "--rounds", "1", "--servers", "dovecot,mailstack-sqlite"],
    "idle": ["--conns", "10", "--users", "3", "--servers", "dovecot,mailstack-sqlite"],
    "login_storm": ["--logins", "20", "--clients", "4", "--fast-hash",
                    "--servers", "dovecot,mailstack-sqlite"],
}


def main(argv: list[str] | None = None) -> Results:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="bench-results.json")
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--install-peers", action="store_true")
    ap.add_argument("--skip-100k", action="store_true",
                    help="mailbox_size without its 100,000-message mailboxes")
    a = ap.parse_args(argv)
    if a.install_peers:
        install_peers()
    res = Results()
    timings = {}
    for name in a.only.split(","):
        mod = BENCHES[name]
        sub = argparse.ArgumentParser()
        mod.add_args(sub)
        t0 = time.perf_counter()
        args = SMOKE[name] if a.smoke else []
        if name == "mailbox_size" and a.skip_100k and not a.smoke:
            args = ["--skip-100k"]
        res.extend(mod.run_from_args(sub.parse_args(args)))
        timings[name] = round(time.perf_counter() - t0, 1)
    print(table(res.rows))
    print("seconds per benchmark:", timings)
    write_json(a.json, res.rows, {**machine_meta(), "seconds": timings, "smoke": a.smoke})
    return res


if __name__ == "__main__":
    main()
