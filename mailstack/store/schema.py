"""The relational schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Tables are created and changed only by migrations (``migrations.py``); this module
describes the current shape for queries. Times are UTC epoch seconds (float) so both
dialects store them the same way.
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
    text,
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
    # RFC 6238 §5.2: the last time step whose code was accepted; a code of that step or
    # an earlier one is refused (no code works twice).
    Column("totp_last_step", BigInteger, nullable=False, default=0),
    # Unification (docs/behaviour.md §2): the address whose password changes together
    # with this user's; NULL: none. Cleared when the rule stops holding.
    Column("unified_address_id", PK, ForeignKey("addresses.id", ondelete="SET NULL")),
    # Bumped by a change of the user's password: web sessions of an older epoch end.
    Column("credential_epoch", Integer, nullable=False, default=0),
    sqlite_autoincrement=True,
)

# One-time emergency codes of a user with two-factor auth: SHA-256 of the code (the
# codes are random, 60 bits, so a fast hash is enough); used_at set on first use.
emergency_codes = Table(
    "emergency_codes", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("user_id", PK, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("code_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("used_at", Float),
    UniqueConstraint("user_id", "code_hash", name="uq_emergency_code"),
    sqlite_autoincrement=True,
)

# Signed-in browsers (web/account.py): the cookie holds a random token, the row its
# SHA-256. Deleting a user's rows signs it out everywhere, on every node.
web_sessions = Table(
    "web_sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", PK, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(16), nullable=False),  # "second-factor" | "in"
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("pending_totp", Text),  # a secret shown while two-factor is being enabled
    Index("ix_web_sessions_user", "user_id"),
)

# Networks a user signed in to the web pages from (new-network notices).
user_networks = Table(
    "user_networks", metadata,
    Column("user_id", PK, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("network", String(64), primary_key=True),
    Column("first_seen", Float, nullable=False),
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
    # RFC 3501 §2.3.2 \Recent: UIDs from here on have not been shown to any session yet
    Column("first_recent_uid", BigInteger, nullable=False, default=1),
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
    Column("sort_keys", Text),  # legacy JSON cache of the keys below (no longer written)
    # SORT / THREAD keys (RFC 5256 §3, RFC 5957), strings already i;ascii-casemapped so
    # binary order is the RFC's; NULL sort_date: not computed yet (filled on first use)
    Column("sort_date", Float),  # sent date, the internal date when Date is unusable
    Column("sort_subject", Text),  # base subject (RFC 5256 §2.1)
    Column("sort_reply", Integer),  # 1: the subject had a reply/forward marker
    Column("sort_from", Text),
    Column("sort_to", Text),
    Column("sort_cc", Text),
    Column("sort_dfrom", Text),  # display forms (RFC 5957)
    Column("sort_dto", Text),
    Column("thread_id", Text),  # Message-ID (THREAD=REFERENCES)
    Column("thread_refs", Text),  # References (or In-Reply-To), space separated
    Column("created_at", Float, nullable=False),
    UniqueConstraint("folder_id", "uid", name="uq_message_uid"),
    Index("ix_messages_folder_modseq", "folder_id", "modseq"),
    Index("ix_messages_sort_date", "folder_id", "sort_date", "uid"),
    Index("ix_messages_blob", "blob_id"),
    # the few messages with keywords, for SELECT's FLAGS list (RFC 3501 §7.2.6)
    Index("ix_messages_keywords", "folder_id", "keywords",
          sqlite_where=text("keywords <> ''"), postgresql_where=text("keywords <> ''")),
    sqlite_autoincrement=True,
)

expunged = Table(
    "expunged", metadata,
    Column("folder_id", PK, ForeignKey("folders.id", ondelete="CASCADE"), primary_key=True),
    Column("uid", BigInteger, primary_key=True),
    Column("modseq", BigInteger, nullable=False),
    Index("ix_expunged_modseq", "folder_id", "modseq"),
)

# Subscriptions whose mailbox does not exist (any more): RFC 3501 §6.3.6, a DELETE does
# not unsubscribe. Subscriptions of existing mailboxes are ``folders.subscribed``.
subscriptions = Table(
    "subscriptions", metadata,
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("name", Text, primary_key=True),
)

# Storage used per address (RFC 9208 QUOTA): kept up to date in the same transaction
# as every message insert and delete, never summed per command.
quota_usage = Table(
    "quota_usage", metadata,
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("messages", BigInteger, nullable=False, default=0),
    # storage warning (docs/behaviour.md §3): 0 = armed; else the octet level usage must
    # drop below before the next warning (set when one is sent, cleared by deletes)
    Column("warn_rearm_below", BigInteger, nullable=False, default=0, server_default="0"),
)

# METADATA (RFC 5464): server entries (folder_id 0) and mailbox entries of an address;
# names are stored lower-case ("/private/..." or "/shared/...").
metadata_entries = Table(
    "metadata_entries", metadata,
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"),
           primary_key=True),
    Column("folder_id", PK, primary_key=True),  # 0: the server
    Column("name", Text, primary_key=True),
    Column("value", LargeBinary, nullable=False),
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
    # Aggregated rows (refused logins): the client network and how many attempts
    # the row stands for (one row per event, network, address and minute).
    Column("network", String(64)),
    Column("count", Integer, nullable=False, default=1),
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
    # DSN parameters (RFC 3461 §4): see ``queue.DsnRequest``.
    Column("dsn_ret", String(8), nullable=False, default=""),
    Column("dsn_envid", Text, nullable=False, default=""),
    Column("dsn_notify", String(64), nullable=False, default=""),
    Column("dsn_orcpt", Text, nullable=False, default=""),
    # Delivery state (the queue runner): "queued" (waiting for an attempt), "delivered",
    # "failed" (permanent error or bounced by the operator) or "expired" (lifetime over).
    Column("state", String(16), nullable=False, default="queued"),
    # Lease of the runner working on the row: another node takes it over after
    # ``lease_until`` (its holder died). "" / 0: not claimed.
    Column("claimed_by", String(64), nullable=False, default=""),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("finished_at", Float, nullable=False, default=0.0),
    Column("history", Text, nullable=False, default="[]"),  # JSON list of attempts
    Column("status", String(16), nullable=False, default=""),  # RFC 3463 of the outcome
    Column("remote_mta", String(255), nullable=False, default=""),
    # A report (RFC 3464) is owed to the sender for this row's final outcome: "" none,
    # else the Action field: "failed" | "delivered" | "relayed".
    Column("report_action", String(16), nullable=False, default=""),
    Index("ix_queue_next", "next_attempt_at"),
    sqlite_autoincrement=True,
)

# DKIM keys (RFC 6376, RFC 8463), in the database so every node signs with them.
# status: pending (generated, not yet published) | active (signing) | retired.
dkim_keys = Table(
    "dkim_keys", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("domain_id", PK, ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("selector", String(63), nullable=False),
    Column("algorithm", String(32), nullable=False),  # rsa-sha256 | ed25519-sha256
    Column("private_key", Text, nullable=False),  # PEM (RSA) / base64 seed (Ed25519)
    Column("public_key", Text, nullable=False),  # base64: the DNS record's p= value
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("domain_id", "selector", name="uq_dkim_keys_selector"),
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

# IMAP import jobs (docs/behaviour.md §9): one row per job, one per source folder.
import_jobs = Table(
    "import_jobs", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"), nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("tls", String(16), nullable=False),  # implicit | starttls | none
    Column("username", Text, nullable=False),
    Column("secret", Text),  # the source password, encrypted; NULL once the job ended
    Column("folders", Text, nullable=False, default="[]"),  # JSON filter; [] = all
    Column("state", String(16), nullable=False),  # queued running done failed cancelled
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("copied", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("total", BigInteger, nullable=False, default=0),  # messages seen at the source
    Column("last_error", Text, nullable=False, default=""),
    Column("skipped_detail", Text, nullable=False, default="[]"),  # JSON [folder, uid, why]
    Column("claimed_by", String(64)),
    Column("lease_until", Float),
    Index("ix_import_jobs_state", "state"),
    sqlite_autoincrement=True,
)

import_folders = Table(
    "import_folders", metadata,
    Column("job_id", PK, ForeignKey("import_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("source", Text, primary_key=True),  # the source's name (decoded)
    Column("target", Text, nullable=False),
    Column("uidvalidity", BigInteger, nullable=False, default=0),
    Column("last_uid", BigInteger, nullable=False, default=0),
    Column("total", BigInteger, nullable=False, default=0),
    Column("copied", BigInteger, nullable=False, default=0),
    Column("skipped", BigInteger, nullable=False, default=0),
    Column("done", Boolean, nullable=False, default=False),
)

# Change events for other processes on one box (SQLite; PostgreSQL uses NOTIFY): written
# in the transaction that made the change, followed by every server process.
change_log = Table(
    "change_log", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    sqlite_autoincrement=True,
)

# MTA-STS policies fetched for destination domains (RFC 8461 §5.1 policy cache):
# ``policy_id`` is the id of the _mta-sts TXT record the policy was fetched for.
mta_sts_policies = Table(
    "mta_sts_policies", metadata,
    Column("domain", String(255), primary_key=True),  # lowercase A-label
    Column("policy_id", String(64), nullable=False),
    Column("policy_text", Text, nullable=False),
    Column("fetched_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# TLS reporting (RFC 8460 §4.3): outcomes of outbound TLS per UTC day, policy domain,
# policy type (sts | tlsa | no-policy-found), result type ("success" or a failure type)
# and receiving MX host; the daily report is built from these counts.
tls_report_counts = Table(
    "tls_report_counts", metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("policy_domain", String(255), primary_key=True),
    Column("policy_type", String(16), primary_key=True),
    Column("result_type", String(48), primary_key=True),
    Column("mx_host", String(255), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# The daily TLS reports (RFC 8460 §4.1: one per policy domain and UTC day): which day's
# reports were sent, and the lock that lets one node at a time send them.
tls_report_days = Table(
    "tls_report_days", metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("holder", String(128), nullable=False, default=""),  # node sending now
    Column("locked_until", Float, nullable=False, default=0.0),
    Column("sent_at", Float, nullable=False, default=0.0),  # 0: not sent yet
    Column("summary", Text, nullable=False, default=""),  # what was sent, for operators
)

# The certificate obtained by ACME (docs/behaviour.md §1, RFC 8555), shared by every node,
# and the lock that lets one node at a time renew it.
tls_certificates = Table(
    "tls_certificates", metadata,
    Column("name", String(64), primary_key=True),  # "acme"
    Column("holder", String(128), nullable=False, default=""),  # node renewing now
    Column("locked_until", Float, nullable=False, default=0.0),
    Column("cert_pem", Text, nullable=False, default=""),  # full chain
    Column("key_pem", Text, nullable=False, default=""),
    Column("updated_at", Float, nullable=False, default=0.0),
)

# Out-of-office responders (docs/behaviour.md §7): several per address, at most one active
# (the partial unique index holds that even against two concurrent activations).
autoresponders = Table(
    "autoresponders", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("address_id", PK, ForeignKey("addresses.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("subject", Text, nullable=False, default=""),  # "": "Auto: <original subject>"
    Column("body", Text, nullable=False),
    Column("html", Text),  # optional text/html alternative
    Column("starts_at", Float),  # UTC epoch seconds; NULL: no start
    Column("ends_at", Float),  # exclusive; NULL: no end
    Column("weekdays", Integer, nullable=False, default=0),  # bit 0 = Monday; 0: every day
    Column("timezone", String(64), nullable=False, default="UTC"),  # IANA name
    Column("from_address", String(320)),  # alternate From; NULL: the address itself
    Column("exclusions", Text, nullable=False, default="[]"),  # JSON: a@b or @domain
    Column("active", Boolean, nullable=False, default=False),
    # Bumped by a reset and by a new activation: throttle rows of an older generation
    # no longer count (every sender may get one reply again).
    Column("generation", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("address_id", "name", name="uq_autoresponder_name"),
    Index("uq_autoresponder_active", "address_id", unique=True,
          sqlite_where=text("active"), postgresql_where=text("active")),
    sqlite_autoincrement=True,
)

# The throttle (RFC 3834 §2): when each sender last got a reply from each responder.
autoreply_throttle = Table(
    "autoreply_throttle", metadata,
    Column("responder_id", PK, ForeignKey("autoresponders.id", ondelete="CASCADE"),
           primary_key=True),
    Column("sender", String(320), primary_key=True),  # the return path's key
    Column("last_reply_at", Float, nullable=False),
    Column("generation", Integer, nullable=False),  # the responder's, at that reply
    Index("ix_autoreply_throttle_at", "last_reply_at"),
)

# Login failures and locks per (client network, address); address "*" locks a whole
# network (docs/behaviour.md §2). Shared by every worker and node; survives restarts.
login_throttle = Table(
    "login_throttle", metadata,
    Column("network", String(64), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("window_start", Float, nullable=False),
    Column("last_at", Float, nullable=False),
    Column("locked_until", Float, nullable=False, default=0.0),
    Index("ix_login_throttle_address", "address"),
)

# Per hosted domain: how a DMARC failure of mail TO this domain is handled (RFC 7489
# §6.6.2, docs/behaviour.md §5 "sender authentication"); no row: the operator's default
# ([sender_auth] dmarc_action).
domain_auth_settings = Table(
    "domain_auth_settings", metadata,
    Column("domain_id", PK, ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True),
    Column("dmarc_action", String(16), nullable=False),  # reject | quarantine | mark
)
