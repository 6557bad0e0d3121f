"""The message a target address gets when its import ends (docs/behaviour.md §9): how
many messages were copied per folder, which were skipped and why, and how long it took.
Pure: builds bytes from the job record."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP

from ..store import ImportJob

MAX_SKIPPED_LINES = 100


def _duration(elapsed: float) -> str:
    seconds = round(elapsed)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def confirmation(job: ImportJob, *, hostname: str, now: float, state: str,
                 error: str = "") -> bytes:
    started = job.started_at or job.created_at
    source = f"{job.username} at {job.host}"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Mail import <postmaster@{hostname}>"
    msg["To"] = job.address
    msg["Date"] = email.utils.formatdate(now)
    msg["Message-ID"] = email.utils.make_msgid("import", domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no autoreply to this
    ok = state == "done"
    msg["Subject"] = (f"Your mail from {job.host} has been imported: {job.copied} messages"
                      if ok else f"Import from {job.host} stopped: {job.copied} messages "
                      "copied")
    lines = [
        f"The import of {source} into {job.address} "
        + ("is complete." if ok else "stopped before the end."),
        "",
        f"Messages copied: {job.copied}",
        f"Messages skipped: {job.skipped}",
        f"Duration: {_duration(now - started)}",
    ]
    if not ok and error:
        lines += ["", f"Reason: {error}"]
    if job.progress:
        lines += ["", "Per folder (copied / at the source, skipped):"]
        for p in job.progress:
            where = p.source if p.source == p.target else f"{p.source} -> {p.target}"
            lines.append(f"  {where}: {p.copied} / {p.total}"
                         + (f", {p.skipped} skipped" if p.skipped else ""))
    if job.skipped_detail:
        lines += ["", "Skipped messages (folder, source UID, reason):"]
        for folder, uid, why in job.skipped_detail[:MAX_SKIPPED_LINES]:
            lines.append(f"  {folder} UID {uid}: {why}")
        if len(job.skipped_detail) > MAX_SKIPPED_LINES:
            lines.append(f"  ... and {len(job.skipped_detail) - MAX_SKIPPED_LINES} more")
    lines += ["", "Messages already copied by an earlier run were not copied again.", ""]
    msg.set_content("\n".join(lines))
    return msg.as_bytes()
