"""Backup and restore of the embedded store: the SQLite database and the message files
it refers to, copied together (docs/behaviour.md §10).

Backup, while the server runs:
1. the database is copied with SQLite's online backup API (``sqlite3.Connection.backup``):
   a consistent snapshot of one moment, whatever writers do meanwhile;
2. every blob that snapshot refers to (messages, queued deliveries) is copied and its
   SHA-256 checked against its name. Blobs are immutable and written before the row
   that refers to them commits, so each one exists; only the collector could remove
   one, and only when nothing refers to it any more *and* it is old. A referenced blob
   that is missing or damaged fails the backup with its id (run it again).
3. ``MANIFEST.json`` is written last: a directory without it is not a finished backup.

Restore puts such a directory into an empty data directory (or, when forced, over an
existing one whose database no process is using): blobs first, then the database,
written to a temporary name and renamed, so a crash half-way never leaves a database
pointing at missing files. Migrations run when the server (or ``mailstack init``)
opens the store.

Both are synchronous file work for the command line; nothing here runs on a server's
event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .base import StoreError
from .blobs import _HEX

MANIFEST = "MANIFEST.json"
# Small files of the data directory that belong with the database: the key that
# decrypts import jobs' source passwords, the (generated or copied) certificate and key.
EXTRA_FILES = ("importer.key", "tls/cert.pem", "tls/key.pem")
DB_NAME = "mailstack.db"
FORMAT = 1


class BackupError(StoreError):
    """The backup or restore cannot be done; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class BackupSummary:
    messages: int
    queued: int
    blobs: int
    blob_bytes: int
    schema_version: int


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite+aiosqlite:///path`` URL; a PostgreSQL URL is
    refused with the tool to use instead."""
    if not url.startswith("sqlite"):
        raise BackupError("the database is PostgreSQL: back it up with pg_dump (and "
                          "restore it with pg_restore or psql); copy the data "
                          "directory's blobs/ together with that dump. `mailstack "
                          "backup` copies only the embedded SQLite database")
    path = url.split(":///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:":
        raise BackupError(f"cannot back up the database {url!r}: not a file")
    return Path(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_database(src: Path, dst: Path) -> None:
    """SQLite online backup from ``src`` to ``dst`` (written as ``dst.tmp``, renamed)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(src, timeout=30)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target, pages=1024)  # steps; writers are not blocked for long
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            target.close()
    finally:
        source.close()
    _fsync_file(tmp)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def _referenced(db: Path) -> tuple[list[str], int, int, int]:
    """(distinct blob ids, messages, queued deliveries, schema version) of a database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [r[0] for r in conn.execute(
            "SELECT blob_id FROM messages UNION SELECT blob_id FROM outbound_queue "
            "ORDER BY 1")]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM outbound_queue").fetchone()[0]
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{db} is not a mailstack database: {exc}") from exc
    finally:
        conn.close()
    return ids, int(messages), int(queued), int(version or 0)


def _blob_rel(blob_id: str) -> Path:
    if not _HEX.match(blob_id):  # never build a path from anything but a hash
        raise BackupError(f"the database refers to a bad blob id {blob_id!r}")
    return Path(blob_id[:2]) / blob_id[2:4] / blob_id


def _copy_blob(src: Path, dst: Path, blob_id: str) -> int:
    """Copy one blob, checking its hash on the way; returns its size."""
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    size = 0
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if digest.hexdigest() != blob_id:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"message file {src} is damaged (its content does not match "
                          "its name)")
    os.replace(tmp, dst)
    return size


def _copy_blobs(ids: list[str], src_root: Path, dst_root: Path) -> int:
    total = 0
    missing: list[str] = []
    dirs: set[Path] = set()
    for blob_id in ids:
        rel = _blob_rel(blob_id)
        dst = dst_root / rel
        if dst.exists():  # content-addressed: the same name holds the same bytes
            total += dst.stat().st_size
            continue
        try:
            total += _copy_blob(src_root / rel, dst, blob_id)
        except FileNotFoundError:
            missing.append(blob_id)
            continue
        dirs.add(dst.parent)
        dirs.add(dst.parent.parent)
    if missing:
        raise BackupError(f"{len(missing)} message files the database refers to are "
                          f"missing from {src_root} (first: {missing[0]}); nothing "
                          "usable was written, run it again")
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)
    if dst_root.exists():
        _fsync_dir(dst_root)
    return total


def _copy_extras(src_dir: Path, dst_dir: Path, *, overwrite: bool) -> list[str]:
    """Copy the ``EXTRA_FILES`` present in ``src_dir`` (mode kept: keys stay 0600);
    returns the names copied."""
    done: list[str] = []
    for name in EXTRA_FILES:
        src, dst = src_dir / name, dst_dir / name
        if not src.is_file() or (dst.exists() and not overwrite):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copy2(src, tmp)
        _fsync_file(tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
        done.append(name)
    return done


def backup(db_url: str, data_dir: Path, target: Path) -> BackupSummary:
    """Copy the database (online backup API) and its blobs into ``target``, which must
    be empty or absent."""
    src_db = sqlite_path(db_url)
    if not src_db.is_file():
        raise BackupError(f"no database at {src_db}: nothing to back up")
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty; back up into a new directory")
    target.mkdir(parents=True, exist_ok=True)
    _copy_database(src_db, target / DB_NAME)
    ids, messages, queued, version = _referenced(target / DB_NAME)
    (target / "blobs").mkdir(exist_ok=True)
    size = _copy_blobs(ids, data_dir / "blobs", target / "blobs")
    extras = _copy_extras(data_dir, target, overwrite=False)
    summary = BackupSummary(messages, queued, len(ids), size, version)
    manifest = {"format": FORMAT, "created_at": time.time(), "database": DB_NAME,
                "extra_files": extras, "schema_version": version, "messages": messages,
                "queued": queued, "blobs": len(ids), "blob_bytes": size}
    tmp = target / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, target / MANIFEST)
    _fsync_dir(target)
    return summary


LOCK_NAME = "server.lock"


def hold_data_dir(data_dir: Path) -> IO[bytes]:
    """Taken by every running server (``App.start``) and kept until it stops: a shared
    ``flock`` on ``<data_dir>/server.lock``, so a restore can tell that a server uses the
    directory. Several servers may share it; the lock goes away with the process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / LOCK_NAME, "ab")  # held for the server's life, closed by stop()
    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    return f


def _in_use(data_dir: Path) -> bool:
    """True when a running server holds ``data_dir`` (see ``hold_data_dir``)."""
    path = data_dir / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def restore(source: Path, db_url: str, data_dir: Path, *, force: bool = False
            ) -> BackupSummary:
    """Put the backup in ``source`` into ``data_dir`` / the database file of ``db_url``.
    Refuses a target that already holds a database or messages unless ``force``."""
    dst_db = sqlite_path(db_url)
    manifest_path = source / MANIFEST
    if not manifest_path.is_file() or not (source / DB_NAME).is_file():
        raise BackupError(f"{source} is not a finished mailstack backup (no {MANIFEST} "
                          f"or {DB_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise BackupError(f"{manifest_path} is unreadable: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source} has backup format {manifest.get('format')!r}; this "
                          f"version reads format {FORMAT}")
    blob_root = data_dir / "blobs"
    occupied = dst_db.exists() or (blob_root.exists() and any(
        p.name != "tmp" for p in blob_root.iterdir()))
    if occupied and not force:
        raise BackupError(f"{data_dir} already holds a database or messages; restore "
                          "into an empty data directory, or pass --force to replace "
                          "its database (stop the server first)")
    if _in_use(data_dir):
        raise BackupError(f"{data_dir} is in use by a running server; stop it first")
    ids, messages, queued, version = _referenced(source / DB_NAME)
    blob_root.mkdir(parents=True, exist_ok=True)
    size = _copy_blobs(ids, source / "blobs", blob_root)
    _copy_extras(source, data_dir, overwrite=force)
    dst_db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):  # the old database's side files
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dst_db}{suffix}")
    tmp = dst_db.with_name(dst_db.name + ".restore")
    shutil.copyfile(source / DB_NAME, tmp)
    _fsync_file(tmp)
    os.replace(tmp, dst_db)
    _fsync_dir(dst_db.parent)
    return BackupSummary(messages, queued, len(ids), size, version)
