"""Engine creation and the schema migration runner.

SQLite (embedded default): WAL journal, ``synchronous=FULL`` (a commit is on disk before
it returns: docs/behaviour.md §12 "durability"), foreign keys on, and write transactions opened
with ``BEGIN IMMEDIATE`` so a read-then-write transaction never fails half way with
SQLITE_BUSY; one asyncio lock per process serialises our own writers.

PostgreSQL: asyncpg; ``synchronous_commit`` is left at its default ``on``. An optional
``search_path`` (tests run each case in its own schema) comes from the URL query
``?schema=name``.

Migrations: a fresh database gets the current schema (``metadata.create_all``) and is
stamped with the latest version; an existing one runs each newer step in order. A step
is a function over a sync connection, so it can use Core DDL on both dialects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, bindparam, event, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import schema

Migration = Callable[[Connection], None]

# Version N is MIGRATIONS[N-1]. Version 1 is the initial schema; append steps, never edit.
def _add_columns(conn: Connection, table: str, columns: list[str]) -> None:
    """``ALTER TABLE table ADD COLUMN ...`` for each column definition (SQL that both
    dialects accept, e.g. ``name TEXT NOT NULL DEFAULT ''``); a column that already
    exists is left alone, so a step can run again."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for column in columns:
        if column.split()[0] not in have:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}")


def _m2_queue_dsn(conn: Connection) -> None:
    _add_columns(conn, "outbound_queue", [
        "dsn_ret VARCHAR(8) NOT NULL DEFAULT ''", "dsn_envid TEXT NOT NULL DEFAULT ''",
        "dsn_notify VARCHAR(64) NOT NULL DEFAULT ''", "dsn_orcpt TEXT NOT NULL DEFAULT ''"])


def _m10_queue_delivery(conn: Connection) -> None:
    _add_columns(conn, "outbound_queue", [
        "state VARCHAR(16) NOT NULL DEFAULT 'queued'",
        "claimed_by VARCHAR(64) NOT NULL DEFAULT ''",
        "lease_until FLOAT NOT NULL DEFAULT 0", "finished_at FLOAT NOT NULL DEFAULT 0",
        "history TEXT NOT NULL DEFAULT '[]'", "status VARCHAR(16) NOT NULL DEFAULT ''",
        "remote_mta VARCHAR(255) NOT NULL DEFAULT ''",
        "report_action VARCHAR(16) NOT NULL DEFAULT ''"])


def _m3_import_jobs(conn: Connection) -> None:
    schema.import_jobs.create(conn, checkfirst=True)
    schema.import_folders.create(conn, checkfirst=True)


def _m4_change_log(conn: Connection) -> None:
    schema.change_log.create(conn, checkfirst=True)


def _m_dane_tables(conn: Connection) -> None:
    schema.mta_sts_policies.create(conn, checkfirst=True)
    schema.tls_report_counts.create(conn, checkfirst=True)


def _m_dkim_keys(conn: Connection) -> None:
    schema.dkim_keys.create(conn, checkfirst=True)


def _m_autoresponder(conn: Connection) -> None:
    for table in (schema.autoresponders, schema.autoreply_throttle):
        table.create(conn, checkfirst=True)


def _m_reliability_throttle(conn: Connection) -> None:
    schema.login_throttle.create(conn, checkfirst=True)
    _add_columns(conn, "activity", ["network VARCHAR(64)",
                                    "count INTEGER NOT NULL DEFAULT 1"])


def _m_imap(conn: Connection) -> None:
    """folders.first_recent_uid (RFC 3501 §2.3.2 \\Recent; existing mail is not recent),
    the table of subscriptions whose mailbox does not exist (RFC 3501 §6.3.6), the
    METADATA entries (RFC 5464), the storage used per address (RFC 9208 QUOTA) and the
    cached SORT/THREAD keys of a message (RFC 5256)."""
    _add_columns(conn, "folders", ["first_recent_uid BIGINT NOT NULL DEFAULT 1"])
    _add_columns(conn, "messages", ["sort_keys TEXT"])
    conn.exec_driver_sql("UPDATE folders SET first_recent_uid = uidnext")
    schema.subscriptions.create(conn, checkfirst=True)
    schema.metadata_entries.create(conn, checkfirst=True)
    schema.quota_usage.create(conn, checkfirst=True)
    conn.exec_driver_sql(
        "INSERT INTO quota_usage (address_id, bytes, messages) "
        "SELECT f.address_id, SUM(m.size), COUNT(*) FROM messages m "
        "JOIN folders f ON f.id = m.folder_id GROUP BY f.address_id")


def _m_accounts_web(conn: Connection) -> None:
    """accounts: TOTP replay guard and unification on users; emergency codes, web
    sessions and the networks users signed in from."""
    pk = "INTEGER" if conn.dialect.name == "sqlite" else "BIGINT"  # schema.PK
    _add_columns(conn, "users", ["totp_last_step BIGINT NOT NULL DEFAULT 0",
                                 f"unified_address_id {pk} REFERENCES addresses(id) "
                                 "ON DELETE SET NULL"])
    for table in (schema.emergency_codes, schema.web_sessions, schema.user_networks):
        table.create(conn, checkfirst=True)


def _m_domain_auth_settings(conn: Connection) -> None:
    """Per-domain DMARC action override (inbound sender authentication)."""
    schema.domain_auth_settings.create(conn, checkfirst=True)


def _m_tls_report_days(conn: Connection) -> None:
    schema.tls_report_days.create(conn, checkfirst=True)


def _m_imap_ext(conn: Connection) -> None:
    """The storage warning's re-arm level (docs/behaviour.md §3) and the SORT/THREAD keys
    as columns (RFC 5256), so that SORT is an ORDER BY; keys already cached as JSON are
    moved into the columns, the others are computed on first use."""
    import json

    _add_columns(conn, "quota_usage", ["warn_rearm_below BIGINT NOT NULL DEFAULT 0"])
    _add_columns(conn, "messages", [
        "sort_date FLOAT", "sort_subject TEXT", "sort_reply INTEGER", "sort_from TEXT",
        "sort_to TEXT", "sort_cc TEXT", "sort_dfrom TEXT", "sort_dto TEXT",
        "thread_id TEXT", "thread_refs TEXT"])
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_messages_sort_date "
                         "ON messages (folder_id, sort_date, uid)")
    m = schema.messages
    rows = conn.execute(select(m.c.id, m.c.sort_keys).where(
        m.c.sort_keys.is_not(None))).all()
    stmt = update(m).where(m.c.id == bindparam("_id")).values(
        sort_date=bindparam("d"), sort_subject=bindparam("s"), sort_reply=bindparam("r"),
        sort_from=bindparam("f"), sort_to=bindparam("t"), sort_cc=bindparam("c"),
        sort_dfrom=bindparam("df"), sort_dto=bindparam("dt"), thread_id=bindparam("i"),
        thread_refs=bindparam("rf"), sort_keys=None)
    def s(x: Any) -> str:  # storable: raw 8-bit bytes were kept as surrogates; no NUL
        return str(x).encode("utf-8", "surrogateescape").decode("utf-8", "replace") \
            .replace("\x00", "")

    batch: list[dict[str, Any]] = []
    for id_, text_ in rows:
        try:  # "sk1" JSON (mailstack/imap/sorting.py before the columns)
            v = json.loads(text_)
            if v[0] != "sk1":
                continue
            refs = " ".join(s(x) for x in v[10])
            batch.append({"_id": id_, "d": float(v[1]), "s": s(v[2]), "r": int(bool(v[3])),
                          "f": s(v[4]), "t": s(v[5]), "c": s(v[6]), "df": s(v[7]),
                          "dt": s(v[8]), "i": "".join(c for c in s(v[9]) if c >= " "),
                          "rf": "".join(c for c in refs if c >= " ")})
        except (ValueError, TypeError, IndexError):
            continue  # computed again on first use
        if len(batch) >= 500:
            conn.execute(stmt, batch)
            batch = []
    if batch:
        conn.execute(stmt, batch)


def _m_user_epoch(conn: Connection) -> None:
    """users.credential_epoch: a user's password change ends their web sessions."""
    _add_columns(conn, "users", ["credential_epoch INTEGER NOT NULL DEFAULT 0"])


def _m_keyword_index(conn: Connection) -> None:
    """A partial index over the messages that carry keywords: SELECT lists a mailbox's
    keywords (RFC 3501 §7.2.6) without reading every message row."""
    ix = next(i for i in schema.messages.indexes if i.name == "ix_messages_keywords")
    ix.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [
    lambda conn: None,  # 1: initial schema (created by create_all on a fresh database)
    _m2_queue_dsn,  # 2: DSN parameters on queue rows (RFC 3461)
    _m3_import_jobs,  # 3: IMAP import jobs
    _m4_change_log,  # 4: change events between processes on one box (SQLite)
    _m_dane_tables,  # 5: dane: MTA-STS policy cache and TLS-RPT counts (RFC 8461, 8460)
    lambda conn: schema.tls_certificates.create(conn, checkfirst=True),  # 6: web: ACME cert + lock
    _m_dkim_keys,  # 7: submission: dkim_keys table (DKIM signing keys per domain)
    _m_autoresponder,  # 8: autoresponder: responders and their throttle (RFC 3834)
    _m_reliability_throttle,  # 9: reliability: login_throttle table; activity network, count
    _m_imap,  # 10: imap: \Recent, deleted-mailbox subscriptions, METADATA, QUOTA, sort keys
    _m10_queue_delivery,  # 11: outbound: delivery state, lease, attempt history, report owed
    _m_accounts_web,  # 12: accounts: TOTP step, unification, emergency codes, web sessions
    _m_domain_auth_settings,  # 13: inbound-auth: per-domain DMARC action override
    _m_tls_report_days,  # 14: tls-rest: which day's TLS reports were sent, and their lock
    _m_imap_ext,  # 15: imap-ext: storage warning re-arm level; SORT/THREAD key columns
    _m_user_epoch,  # 16: accounts-support: users.credential_epoch
    _m_keyword_index,  # 17: imap-perf: partial index of messages with keywords
]
LATEST = len(MIGRATIONS)


def _split_schema(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema_name = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema_name


def schema_of(url: str) -> str | None:
    return None if url.startswith("sqlite") else _split_schema(url)[1]


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        sqlite_connection_setup(engine.sync_engine)
        return engine
    url, schema_name = _split_schema(url)
    connect_args: dict[str, Any] = {}
    if schema_name:
        connect_args["server_settings"] = {"search_path": schema_name}
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                               connect_args=connect_args)


def sqlite_connection_setup(sync_engine: Engine) -> None:
    """Every SQLite connection of ``sync_engine`` (the async engine's, or the store's
    threads' in threads.py): WAL, durable commits, foreign keys, and our own BEGIN."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit transactions get in the way).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def migrate_sync(conn: Connection) -> int:
    """Bring the schema to LATEST; returns the version it started from (0: fresh)."""
    insp = inspect(conn)
    if not insp.has_table("schema_version"):
        schema.metadata.create_all(conn)
        conn.execute(insert(schema.schema_version), [
            {"version": v, "applied_at": time.time()} for v in range(1, LATEST + 1)])
        # UIDVALIDITY values come from one counter, seeded from the clock, so a folder
        # deleted and created again never gets a value seen before (RFC 9051 §2.3.1.1).
        conn.execute(insert(schema.counters), [{"name": "uidvalidity",
                                                 "value": int(time.time())}])
        return 0
    current = conn.execute(select(text("max(version)")).select_from(
        schema.schema_version)).scalar_one() or 0
    for version in range(current + 1, LATEST + 1):
        MIGRATIONS[version - 1](conn)
        conn.execute(insert(schema.schema_version),
                     {"version": version, "applied_at": time.time()})
    return int(current)
