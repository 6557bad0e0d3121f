"""The schema as the first release (migration version 1) created it: kept to test that
every migration step brings such a database to the shape a fresh one gets. Never edit.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# An integer primary key that is AUTOINCREMENT on SQLite (ids never reused, which POP3
# UIDL relies on) and BIGSERIAL-like on PostgreSQL.
PK = BigInteger().with_variant(Integer, "sqlite")

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

counters = Table(
    "counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

domains = Table(
    "domains", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),  # lowercase A-label
    Column("plan", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

addresses = Table(
    "addresses", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("domain_id", PK, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("local_part", String(64), nullable=False),
    Column("local_key", String(64), nullable=False),  # lowercase: addresses compare so
    Column("kind", String(16), nullable=False),  # mailbox | no-reply | catchall
    Column("password_hash", Text),
    Column("display_name", Text, nullable=False, default=""),
    Column("forward_to", Text, nullable=False, default="[]"),  # JSON list of addresses
    Column("keep_copy", Boolean, nullable=False, default=True),
    Column("app_passwords_only", Boolean, nullable=False, default=False),
    # Bumped whenever a credential changes; sessions holding an older epoch are cut.
    Column("credential_epoch", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("domain_id", "local_key", name="uq_address_local"),
    sqlite_autoincrement=True,
)

aliases = Table(
    "aliases", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("domain_id", PK, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("local_part", String(64), nullable=False),
    Column("local_key", String(64), nullable=False),
    Column("targets", Text, nullable=False),  # JSON list of full addresses
    Column("created_at", Float, nullable=False),
    UniqueConstraint("domain_id", "local_key", name="uq_alias_local"),
    sqlite_autoincrement=True,
)

users = Table(
    "users", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("login", String(320), nullable=False, unique=True),  # lowercase
    Column("password_hash", Text, nullable=False),
    Column("totp_secret", Text),
    Column("created_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

grants = Table(
    "grants", metadata,
    Column("user_id", PK, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("permissions", Text, nullable=False),  # comma list: read,passwd,autoresponder,send
)

app_passwords = Table(
    "app_passwords", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    UniqueConstraint("address_id", "name", name="uq_app_password_name"),
    sqlite_autoincrement=True,
)

folders = Table(
    "folders", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),  # UTF-8, "/" delimited; "INBOX" exactly
    Column("special_use", String(32)),  # \Sent \Drafts \Trash \Junk \Archive ...
    Column("subscribed", Boolean, nullable=False, default=True),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uidnext", BigInteger, nullable=False, default=1),
    Column("highestmodseq", BigInteger, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("address_id", "name", name="uq_folder_name"),
    sqlite_autoincrement=True,
)

messages = Table(
    "messages", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("folder_id", PK, ForeignKey("folders.id", ondelete="CASCADE"), nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("modseq", BigInteger, nullable=False),
    Column("flags", Integer, nullable=False, default=0),  # bitmask of system flags
    Column("keywords", Text, nullable=False, default=""),  # space separated
    Column("internal_date", Float, nullable=False),
    Column("size", BigInteger, nullable=False),  # len(prefix) + blob size
    Column("blob_id", String(64), nullable=False),  # sha256 hex of the shared body
    # Per-copy header lines (Return-Path, Delivered-To...) stored before the shared blob,
    # so one blob serves every recipient of a message.
    Column("prefix", LargeBinary, nullable=False, default=b""),
    Column("envelope", Text),  # cached IMAP structure (JSON), filled lazily
    Column("bodystructure", Text),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("folder_id", "uid", name="uq_message_uid"),
    Index("ix_messages_folder_modseq", "folder_id", "modseq"),
    Index("ix_messages_blob", "blob_id"),
    sqlite_autoincrement=True,
)

expunged = Table(
    "expunged", metadata,
    Column("folder_id", PK, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", BigInteger, primary_key=True),
    Column("modseq", BigInteger, nullable=False),
    Index("ix_expunged_modseq", "folder_id", "modseq"),
)

activity = Table(
    "activity", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("address", String(320)),  # the address or login concerned (lowercase)
    Column("client_ip", String(64)),
    Column("protocol", String(16)),
    Column("event", String(32), nullable=False),  # login_ok, login_fail, passwd_change...
    Column("detail", Text, nullable=False, default=""),
    Index("ix_activity_address_at", "address", "at"),
    sqlite_autoincrement=True,
)

send_log = Table(
    "send_log", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("recipients", Integer, nullable=False),
    Index("ix_send_log_address_at", "address_id", "at"),
    sqlite_autoincrement=True,
)

outbound_queue = Table(
    "outbound_queue", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("created_at", Float, nullable=False),
    Column("sender", String(320), nullable=False),  # "" for the null reverse-path
    Column("recipient", String(320), nullable=False),
    Column("domain", String(255), nullable=False),
    Column("blob_id", String(64), nullable=False),
    Column("prefix", LargeBinary, nullable=False, default=b""),
    Column("size", BigInteger, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("expires_at", Float, nullable=False),
    Column("delay_notified", Boolean, nullable=False, default=False),
    Index("ix_queue_next", "next_attempt_at"),
    sqlite_autoincrement=True,
)

pop3_locks = Table(
    "pop3_locks", metadata,
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("refreshed_at", Float, nullable=False),
)

seen_networks = Table(
    "seen_networks", metadata,
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("network", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
)
