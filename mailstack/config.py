"""The settings model: one TOML file -> typed, validated, frozen settings.

Every field carries a description (``doc``); ``render_example()`` turns the model into
the annotated ``config/mailstack.toml`` so the example can never drift from the code
(a test compares the two).

A bad file stops start-up with a ``ConfigError`` naming the key, the value and what is
wrong. Unknown keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TlsMode = Literal["implicit", "starttls", "none"]


class ConfigError(Exception):
    """A setting is wrong. ``key`` is the dotted TOML path.

    One run reports every bad key: ``errors`` holds each problem found (this one first),
    and ``str()`` has one line per problem."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key, self.value, self.problem = key, value, problem
        shown = "(missing)" if value is _MISSING else repr(value)
        self.line = f"config key {key!r} = {shown}: {problem}"
        self.errors: list[ConfigError] = [self]
        super().__init__(self.line)

    @classmethod
    def several(cls, errors: list[ConfigError]) -> ConfigError:
        first = errors[0]
        exc = cls(first.key, first.value, first.problem)
        exc.errors = list(errors)
        exc.args = ("\n".join(e.line for e in errors),)
        return exc


_MISSING = object()


def doc(text: str, **constraints: Any) -> dict[str, Any]:
    return {"doc": text, **constraints}


def _f(default: Any, text: str, **constraints: Any) -> Any:
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy(default), metadata=doc(text, **constraints))
    return field(default=default, metadata=doc(text, **constraints))


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return dataclasses.replace(value)


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = _f("mail.example.net", "The server's host name: used in greetings, "
                       "Received headers and the TLS certificate. Clients must use this name.")
    data_dir: str = _f("./data", "Where the database (SQLite default), message blobs and "
                       "generated certificates live. Relative paths are relative to the "
                       "working directory.")
    database_url: str = _f("", "SQLAlchemy URL of the store. Empty: SQLite file "
                           "<data_dir>/mailstack.db. For several nodes use "
                           "postgresql+asyncpg://user@host/db.")
    allow_plaintext_auth_on_loopback: bool = _f(False, "Accept passwords over unencrypted "
                                                "connections from 127.0.0.0/8 and ::1 only "
                                                "(tests, local relays). Never on other "
                                                "addresses.")
    blob_gc_interval_seconds: float = _f(3600.0, "How often message files no longer "
                                         "referenced (expunged, deleted) are removed; "
                                         "0 turns the collector off.", min=0)
    blob_gc_min_age_seconds: float = _f(3600.0, "Only files older than this are "
                                        "collected (a younger one may belong to a "
                                        "delivery still being committed).", min=60)
    tls_handshake_timeout_seconds: float = _f(30.0, "A client that has not finished its "
                                              "TLS handshake (implicit TLS or after "
                                              "STARTTLS/STLS) by then is dropped.", min=1)
    node_name: str = _f("", "This node's name, unique among the nodes sharing one "
                        "database. Empty: the host name. Maildrop locks carry it, so a "
                        "restarted node drops the locks its previous run held.")
    max_pending_tls_handshakes: int = _f(256, "TLS handshakes in progress, all listeners "
                                         "together; a connection past it is closed at "
                                         "once (with per-IP caps counted at accept time, "
                                         "before any TLS, this bounds memory under a "
                                         "flood of half-open connections).", min=1)
    workers: int = _f(0, "Server processes sharing the listening ports (SO_REUSEPORT), "
                      "restarted by a supervisor if one dies; 0: one per CPU core, 1: a "
                      "single process. `mailstack serve --workers N` overrides it.",
                      min=0, max=256)
    shutdown_grace_seconds: float = _f(5.0, "On SIGTERM/SIGINT, how long open sessions get "
                                       "to finish after being told the server is going "
                                       "down.", min=0)


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str = _f("", "PEM certificate chain for the host name. Empty: "
                        "<data_dir>/tls/cert.pem (generated self-signed in --dev mode).")
    key_file: str = _f("", "PEM private key. Empty: <data_dir>/tls/key.pem.")
    min_version: str = _f("TLSv1.2", "Lowest TLS version accepted.",
                          choices=("TLSv1.2", "TLSv1.3"))
    next_key_file: str = _f("", "PEM private key the certificate will move to at the next "
                            "renewal. When set, `mailstack tlsa` also prints its TLSA "
                            "record so both can be published before the rollover "
                            "(RFC 7671 §8.1).")
    acme: bool = _f(False, "Obtain and renew the certificate by ACME (RFC 8555): one "
                    "certificate for server.hostname plus the autoconfig., autodiscover. "
                    "and mta-sts. names of every hosted domain, validated as "
                    "acme_challenge says. Stored as <data_dir>/acme/cert.pem and "
                    "key.pem (0600) unless cert_file/key_file are set.")
    acme_challenge: str = _f("auto", "How the ACME server validates the names: http-01 "
                             "(listeners.http, port 80), tls-alpn-01 (RFC 8737, "
                             "listeners.https, port 443: when port 80 is not reachable), "
                             "or auto: HTTP-01 when listeners.http is enabled, and "
                             "TLS-ALPN-01 when it is not or when HTTP-01 failed.",
                             choices=("auto", "http-01", "tls-alpn-01"))
    acme_directory_url: str = _f("https://acme-v02.api.letsencrypt.org/directory",
                                 "The ACME server's directory URL (Let's Encrypt by "
                                 "default; its staging directory for trials).")
    acme_contact: str = _f("", "Contact address given to the ACME server for expiry "
                           "notices (e.g. postmaster@example.net); empty: none.")
    acme_renew_days: float = _f(30.0, "Renew this many days before the certificate "
                                "expires (or after two thirds of its lifetime when that "
                                "is shorter).", min=0)
    acme_check_interval_seconds: float = _f(3600.0, "How often each node checks whether "
                                            "the certificate needs renewing or another node "
                                            "has renewed it.", min=1)
    acme_ca_file: str = _f("", "PEM file of CA certificates to trust for the ACME "
                           "directory's HTTPS (a private or test CA); empty: the system's.")


@dataclass(frozen=True)
class ListenerSettings:
    enabled: bool = _f(True, "Start this listener.")
    address: str = _f("0.0.0.0", "Address to bind.")
    port: int = _f(0, "TCP port (0: any free port, for tests).", min=0, max=65535)
    tls: TlsMode = _f("none", "implicit: TLS from the first byte; starttls: plaintext "
                      "upgraded by STARTTLS/STLS; none: never TLS.",
                      choices=("implicit", "starttls", "none"))


def _listener(port: int, tls: str) -> ListenerSettings:
    return ListenerSettings(port=port, tls=tls)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ListenersSettings:
    smtp: ListenerSettings = _f(_listener(25, "starttls"),
                                "SMTP MX: mail from the internet for hosted domains.")
    submissions: ListenerSettings = _f(_listener(465, "implicit"),
                                       "SMTP submission over implicit TLS (RFC 8314).")
    submission: ListenerSettings = _f(_listener(587, "starttls"),
                                      "SMTP submission with STARTTLS required before AUTH "
                                      "(RFC 6409).")
    imaps: ListenerSettings = _f(_listener(993, "implicit"), "IMAP over implicit TLS.")
    imap: ListenerSettings = _f(_listener(143, "starttls"),
                                "IMAP with STARTTLS; LOGINDISABLED before it.")
    pop3s: ListenerSettings = _f(_listener(995, "implicit"), "POP3 over implicit TLS.")
    pop3: ListenerSettings = _f(_listener(110, "starttls"), "POP3 with STLS before USER.")
    https: ListenerSettings = _f(_listener(443, "implicit"),
                                 "HTTPS: client auto-configuration (Thunderbird, Outlook, "
                                 "Apple), the MTA-STS policy, and /metrics when "
                                 "web.metrics_token is set.")
    http: ListenerSettings = _f(_listener(80, "none"),
                                "HTTP: auto-configuration, ACME HTTP-01 challenges; "
                                "everything else is redirected to https.")
    metrics: ListenerSettings = _f(ListenerSettings(address="127.0.0.1", port=8010,
                                                    tls="none"),
                                   "Prometheus /metrics (loopback by default; set "
                                   "web.metrics_token to require a bearer token).")


@dataclass(frozen=True)
class PlanSettings:
    max_recipients_per_message: int = _f(100, "Envelope recipients per message "
                                         "(To, Cc and Bcc all count); the next get 452 4.5.3.",
                                         min=1)
    daily_recipients: int = _f(1000, "Recipients an address may send to over a rolling "
                               "24 hours.", min=1)
    max_addresses: int = _f(1000, "Addresses (mailboxes, no-reply, catchall) a domain "
                            "may hold.", min=1)
    max_message_size: int = _f(50 * 1024 * 1024, "Largest message in octets (SMTP SIZE).",
                               min=1024)
    storage_quota: int = _f(0, "Octets of mail each address may keep (IMAP QUOTA STORAGE, "
                            "RFC 9208); 0: no limit. Over it, IMAP APPEND/COPY get NO "
                            "[OVERQUOTA] and SMTP RCPT 452 4.2.2; reading keeps working.",
                            min=0)
    message_quota: int = _f(0, "Messages each address may keep (IMAP QUOTA MESSAGE); "
                            "0: no limit.", min=0)


def _default_plans() -> dict[str, PlanSettings]:
    return {
        "free": PlanSettings(max_recipients_per_message=10, daily_recipients=100,
                             max_addresses=5, max_message_size=25 * 1024 * 1024,
                             storage_quota=1 << 30),
        "starter": PlanSettings(max_recipients_per_message=100, daily_recipients=500,
                                max_addresses=50, max_message_size=35 * 1024 * 1024,
                                storage_quota=10 << 30),
        "standard": PlanSettings(max_recipients_per_message=100, daily_recipients=2000,
                                 max_addresses=1000, max_message_size=50 * 1024 * 1024,
                                 storage_quota=50 << 30),
    }


@dataclass(frozen=True)
class SmtpSettings:
    max_line_length: int = _f(1000, "Longest command or text line in octets, CRLF "
                              "included (RFC 5321 §4.5.3.1.4/.6).", min=512)
    max_header_lines: int = _f(1000, "Most header fields a message may carry.", min=10)
    max_header_bytes: int = _f(256 * 1024, "Largest total header block in octets.", min=1024)
    max_mime_depth: int = _f(50, "Deepest MIME nesting accepted.", min=1)
    command_timeout: float = _f(300.0, "Seconds to wait for the next command "
                                "(RFC 5321 §4.5.3.2.7 says at least 5 minutes).", min=1)
    data_timeout: float = _f(600.0, "Seconds a whole DATA transfer may take.", min=1)
    max_connections_per_ip: int = _f(20, "Concurrent SMTP connections from one client IP.",
                                     min=1)
    max_inflight_message_bytes: int = _f(512 * 1024 * 1024, "Message octets all SMTP "
                                         "connections together may hold in memory while "
                                         "receiving and storing; past it a message goes "
                                         "to a spool file (or, with spooling off, DATA/"
                                         "BDAT get 452 4.3.1: try again later).",
                                         min=1024 * 1024)
    spool_threshold_bytes: int = _f(1024 * 1024, "A message (DATA or BDAT) larger than "
                                    "this is written to a temporary file under the data "
                                    "directory while it arrives, instead of held in "
                                    "memory; 0 keeps every message in memory.", min=0)
    min_free_bytes: int = _f(64 * 1024 * 1024, "Refuse new mail at MAIL with 452 4.3.1 "
                             "while the free space under the data directory is below "
                             "this plus the announced SIZE (like Postfix's "
                             "queue_minfree); 0 turns the check off. Reading mail goes on.",
                             min=0)
    default_plan: str = _f("standard", "Plan used for a domain whose plan is unknown.")


@dataclass(frozen=True)
class AuthSettings:
    argon2_time_cost: int = _f(3, "Argon2id passes.", min=1)
    argon2_memory_kib: int = _f(65536, "Argon2id memory in KiB.", min=8)
    argon2_parallelism: int = _f(4, "Argon2id lanes.", min=1)
    slow_after_failures: int = _f(3, "Failures (per client network or per address) after "
                                  "which each further attempt is delayed.", min=1)
    lock_after_failures: int = _f(10, "Failures of one address from one client network "
                                  "after which that pair (only) is refused for "
                                  "lockout_seconds.", min=1)
    failure_window_seconds: float = _f(900.0, "How long a failure counts.", min=1)
    lockout_seconds: float = _f(900.0, "How long refusing lasts once locked.", min=1)
    max_delay_seconds: float = _f(5.0, "Upper bound of the delay added per attempt.", min=0)
    ipv4_prefix: int = _f(24, "Client network size for IPv4 throttling.", min=8, max=32)
    ipv6_prefix: int = _f(64, "Client network size for IPv6 throttling.", min=16, max=128)
    network_lock_after_failures: int = _f(100, "Failures from one client network (all "
                                          "addresses together, in the window) after "
                                          "which the whole network is refused, if they "
                                          "span network_lock_min_addresses addresses "
                                          "(a password spray). Below that a network is "
                                          "only slowed.", min=1)
    network_lock_min_addresses: int = _f(10, "Distinct addresses the failures of a network "
                                         "must span before the whole network is "
                                         "refused.", min=1)
    notify_new_network: bool = _f(True, "Mail the address a security notice when it logs "
                                  "in from a network never seen for it before.")
    notify_failed_logins: bool = _f(True, "Mail the address a security notice about failed "
                                    "password attempts.")
    failed_notice_interval_seconds: float = _f(3600.0, "At most one failed-attempt notice "
                                               "per address in this many seconds.", min=60)
    credential_cache_seconds: float = _f(3600.0, "How long a successfully verified "
                                         "password is remembered (as a keyed hash, in "
                                         "memory) so a client that logs in often costs "
                                         "one Argon2 computation per this period. A "
                                         "changed password or revoked app password stops "
                                         "matching at once. 0 turns the cache off.", min=0)
    credential_cache_size: int = _f(10000, "Most remembered credentials (least recently "
                                    "used go first).", min=1)


@dataclass(frozen=True)
class ImapSettings:
    idle_timeout_seconds: float = _f(1800.0, "Auto-logout after this much inactivity "
                                     "(RFC 9051 §5.4: at least 30 minutes).", min=1)
    max_line_length: int = _f(64 * 1024, "Longest command line in octets.", min=1024)
    max_literal_before_login: int = _f(8192, "Largest literal accepted before "
                                       "authentication.", min=256)
    max_connections_per_ip: int = _f(50, "Concurrent IMAP connections from one client IP "
                                     "(mail clients open several per account).", min=1)
    metadata_max_value_size: int = _f(64 * 1024, "Largest METADATA entry value in octets "
                                      "(RFC 5464 §4.3: larger ones get NO [METADATA "
                                      "MAXSIZE n]).", min=1024)
    metadata_max_entries: int = _f(512, "METADATA entries per address, server and mailbox "
                                   "entries together (RFC 5464 §4.3: more get NO [METADATA "
                                   "TOOMANY]).", min=16)


@dataclass(frozen=True)
class QuotaSettings:
    over_quota_permanent: bool = _f(False, "SMTP RCPT to an address over its storage quota "
                                    "gets 552 5.2.2 (permanent) instead of 452 4.2.2 "
                                    "(temporary: the sender retries; RFC 3463).")
    warning_percent: int = _f(90, "When a delivery or APPEND takes an address's storage "
                              "past this share of its plan's storage quota, one warning "
                              "mail goes to that address (once per crossing); 0: never.",
                              min=0, max=100)
    warning_rearm_percent: int = _f(85, "The warning is sent again only after usage has "
                                    "dropped below this share of the quota.", min=0,
                                    max=100)


@dataclass(frozen=True)
class Pop3Settings:
    idle_timeout_seconds: float = _f(600.0, "Auto-logout after this much inactivity "
                                     "(RFC 1939 §3: at least 10 minutes).", min=1)
    lock_stale_seconds: float = _f(900.0, "A maildrop lock not refreshed for this long "
                                   "(a crashed process) is taken over. A live session "
                                   "refreshes its lock every third of this.", min=10)
    max_connections_per_ip: int = _f(20, "Concurrent POP3 connections (110 and 995 each) "
                                     "from one client IP.", min=1)


@dataclass(frozen=True)
class TransportRoute:
    host: str = _f("", "Next hop as host:port (IPv6 as [addr]:port); port 25 when left "
                   "out. Empty: this domain goes by its MX records as usual.")
    auth_user: str = _f("", "User name for SMTP AUTH at the next hop (a smarthost). "
                        "Empty: no AUTH. AUTH PLAIN/LOGIN is only sent over TLS.")
    auth_password_file: str = _f("", "File holding the AUTH password (first line). Never "
                                 "put the password itself in this file.")
    require_tls: bool = _f(False, "TLS is mandatory for this route: without STARTTLS or "
                           "with a failed handshake the message waits (4.7.5) instead of "
                           "going out in plaintext. Always on when auth_user is set.")


@dataclass(frozen=True)
class OutboundSettings:
    enabled: bool = _f(True, "Run the delivery queue runner in this node's `serve` "
                       "(several nodes on one PostgreSQL may all run it).")
    helo_name: str = _f("", "Name sent in EHLO/HELO. Empty: server.hostname.")
    mx_port: int = _f(25, "TCP port of MX hosts (RFC 5321: 25). A transport map entry "
                      "names its own port.", min=1, max=65535)
    poll_interval_seconds: float = _f(30.0, "How often the queue is read for rows queued "
                                      "by other processes or nodes (rows queued in this "
                                      "process wake the runner at once).", min=0.01)
    lease_seconds: float = _f(1800.0, "A claimed row is reserved for this long; a node "
                              "that died holding it loses it then and another node "
                              "takes it over. Must exceed the longest delivery attempt.",
                              min=1)
    batch_size: int = _f(500, "Most due rows claimed per pass.", min=1)
    max_connections: int = _f(50, "Outbound SMTP connections open at once (all "
                              "destinations together).", min=1)
    max_connections_per_destination: int = _f(4, "Connections open at once to one "
                                              "destination (domain or transport route).",
                                              min=1)
    max_messages_per_connection: int = _f(100, "Messages sent over one connection (RSET "
                                          "between them) before it is closed.", min=1)
    connect_timeout_seconds: float = _f(30.0, "TCP connect timeout per address.", min=0.01)
    greeting_timeout_seconds: float = _f(300.0, "Wait for the 220 greeting "
                                         "(RFC 5321 §4.5.3.2.1: 5 minutes).", min=0.01)
    command_timeout_seconds: float = _f(300.0, "Wait for the reply to EHLO, STARTTLS, "
                                        "AUTH, MAIL, RCPT, RSET (RFC 5321 §4.5.3.2.2-3: "
                                        "5 minutes).", min=0.01)
    data_init_timeout_seconds: float = _f(120.0, "Wait for the 354 reply to DATA "
                                          "(RFC 5321 §4.5.3.2.4: 2 minutes).", min=0.01)
    data_block_timeout_seconds: float = _f(180.0, "Longest wait to send one block of the "
                                           "message (RFC 5321 §4.5.3.2.5: 3 minutes).",
                                           min=0.01)
    data_end_timeout_seconds: float = _f(600.0, "Wait for the reply to the final dot "
                                         "(RFC 5321 §4.5.3.2.6: 10 minutes).", min=0.01)
    dns_timeout_seconds: float = _f(20.0, "Lifetime of one DNS query; a timeout defers, "
                                    "never bounces.", min=0.01)
    retry_schedule_minutes: str = _f("5,10,20,40", "Minutes between the first attempts "
                                     "after a temporary failure, comma separated.")
    retry_min_hours: float = _f(1.0, "After the schedule: the next attempt comes between "
                                "retry_min_hours and retry_max_hours later (random).",
                                min=0.001)
    retry_max_hours: float = _f(4.0, "See retry_min_hours.", min=0.001)
    lifetime_seconds: float = _f(5 * 86400.0, "How long a message is retried before it is "
                                 "given up with a final report (RFC 5321 §4.5.4.1: at "
                                 "least 4-5 days). Applies to messages queued from now on.",
                                 min=60)
    delay_notice_after_seconds: float = _f(4 * 3600.0, "A sender whose message still waits "
                                           "after this long gets one delay notice saying "
                                           "until when delivery is retried; 0: never.",
                                           min=0)
    keep_finished_seconds: float = _f(7 * 86400.0, "Delivered and failed rows stay visible "
                                      "in `mailstack queue` for this long, then are "
                                      "removed.", min=0)
    transport: dict[str, TransportRoute] = _f({}, "Transport map: recipient domain -> next "
                                              "hop, \"*\" for every other domain (a "
                                              "smarthost). A value is \"host:port\" or a "
                                              "table with host, auth_user, "
                                              "auth_password_file (AUTH PLAIN/LOGIN, only "
                                              "over TLS) and require_tls, e.g. "
                                              "[outbound.transport.\"*\"] host = "
                                              "\"smtp.provider.example:587\" auth_user = "
                                              "\"me\" auth_password_file = "
                                              "\"/etc/mailstack/relay.pw\". Empty: MX "
                                              "records for every domain.")

    def retry_schedule(self) -> tuple[float, ...]:
        """The schedule in seconds (validated at load)."""
        return tuple(float(x) * 60 for x in self.retry_schedule_minutes.split(",")
                     if x.strip())


@dataclass(frozen=True)
class ImporterSettings:
    enabled: bool = _f(True, "Run IMAP import jobs on this node (jobs are recorded by "
                       "`mailstack import`; any node with this on picks them up).")
    max_jobs: int = _f(4, "Import jobs running at once on this node.", min=1)
    max_jobs_per_host: int = _f(2, "Import jobs running at once against one source host "
                                "(providers limit connections per account and IP).", min=1)
    batch_messages: int = _f(50, "Messages fetched per FETCH command.", min=1)
    batch_bytes: int = _f(16 * 1024 * 1024, "Octets fetched per FETCH command (a bigger "
                          "message is fetched alone).", min=64 * 1024)
    timeout_seconds: float = _f(120.0, "Seconds to wait for the source server's answer.",
                                min=1)
    retries: int = _f(5, "Reconnections after a dropped connection before the job fails.",
                      min=0)
    retry_base_seconds: float = _f(10.0, "First wait before reconnecting; doubled each "
                                   "time.", min=0)
    poll_seconds: float = _f(5.0, "How often a node looks for new jobs.", min=0.1)
    lease_seconds: float = _f(120.0, "A running job whose node stopped renewing its claim "
                              "for this long (a crashed node) is resumed by another.",
                              min=10)
    ca_file: str = _f("", "Extra CA certificates (PEM file) trusted for source servers, "
                      "besides the system's: for tests and private PKIs.")


@dataclass(frozen=True)
class OutboundTlsSettings:
    dns_resolver: str = _f("", "Validating DNS resolver(s) used for outbound MX, TLSA and "
                           "MTA-STS lookups, as host or host:port ([v6]:port), comma "
                           "separated. Only its AD bit makes an answer DNSSEC-secure "
                           "(RFC 7672 §2.1). Empty: the system's resolvers "
                           "(/etc/resolv.conf); a warning is logged at start-up when they "
                           "do not validate.")
    dns_timeout_seconds: float = _f(5.0, "Timeout of one DNS query.", min=0.1)
    dnssec_probe_name: str = _f(".", "A name known to be DNSSEC-signed, queried at "
                                "start-up to check that the resolver validates.")
    dane: bool = _f(True, "Use DANE (RFC 7672): TLSA records of MX hosts found by "
                    "DNSSEC-validated lookups make TLS mandatory and authenticated.")
    mta_sts: bool = _f(True, "Use MTA-STS policies (RFC 8461) of destinations without "
                       "DANE.")
    mta_sts_fetch_timeout_seconds: float = _f(20.0, "Timeout of one MTA-STS policy fetch "
                                              "(connect, TLS and body).", min=1)
    extra_ca_files: str = _f("", "PEM files of extra certificate authorities trusted for "
                             "MTA-STS (policy fetch and MX certificates), comma separated, "
                             "in addition to the system's. For tests and private PKIs.")
    tls_reporting: bool = _f(True, "Count TLS outcomes per destination policy domain for "
                             "TLS reports (RFC 8460).")
    tls_report_organization: str = _f("", "organization-name in the TLS reports we send "
                                      "(RFC 8460 §4.4). Empty: the server host name.")
    tls_report_contact: str = _f("", "contact-info in the TLS reports we send. Empty: "
                                 "postmaster@<server host name>.")
    tls_report_from: str = _f("", "From: address of the TLS reports we send by mail (once "
                              "a day, to the rua of each destination's _smtp._tls record). "
                              "Empty: tls-reports@<server host name>.")


@dataclass(frozen=True)
class WebSettings:
    advertised_hostname: str = _f("", "Host name given to mail clients (auto-configuration, "
                                  "`mailstack client-settings`). Empty: server.hostname; "
                                  "serve --dev uses localhost.")
    metrics_token: str = _f("", "When set, /metrics requires `Authorization: Bearer "
                            "<token>` and is also served on the https listener.")
    metrics_blob_size_interval_seconds: float = _f(300.0, "The blob store's size (a walk "
                                                   "of its files, in a thread) is computed "
                                                   "at most this often.", min=0)
    mta_sts_mode: str = _f("enforce", "MTA-STS policy mode served at "
                           "https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 §3.2).",
                           choices=("enforce", "testing", "none"))
    mta_sts_mx: str = _f("", "Comma-separated MX host names (or *.patterns) in the policy. "
                         "Empty: server.hostname.")
    mta_sts_max_age: int = _f(604800, "max_age of the MTA-STS policy in seconds.",
                              min=1, max=31557600)
    mobileconfig_sign: bool = _f(False, "Sign Apple .mobileconfig profiles with the "
                                 "server certificate (CMS), so devices show them verified.")
    session_idle_seconds: float = _f(1800.0, "A signed-in browser that makes no request "
                                     "for this long is signed out (self-service pages).",
                                     min=60)
    session_max_seconds: float = _f(43200.0, "A browser sign-in ends this long after it "
                                    "started, whatever its activity.", min=60)


@dataclass(frozen=True)
class AutoresponderSettings:
    enabled: bool = _f(True, "Answer mail with the active out-of-office responder of the "
                       "receiving address (docs/behaviour.md §7). False: no reply is ever "
                       "sent (responders stay saved).")
    throttle_days: float = _f(7.0, "A sender who got a reply gets the next one only for a "
                              "message arriving this many days (or more) after it "
                              "(RFC 3834 §2). Throttle records older than this are pruned.",
                              min=0.01)
    max_replies_per_hour: int = _f(30, "At most this many replies per address per hour "
                                   "(distinct senders), so a responder cannot be used to "
                                   "flood forged senders. Replies do not count against the "
                                   "plan's daily sending limit.", min=1)
    exclude_subdomains: bool = _f(False, "An exclusion written @domain.xyz also matches "
                                  "senders at subdomains (a@mail.domain.xyz). Default: only "
                                  "the domain itself.")


@dataclass(frozen=True)
class SenderAuthSettings:
    enabled: bool = _f(True, "Check SPF, DKIM, DMARC and ARC of mail arriving on the MX "
                       "listener (port 25) and add Authentication-Results and "
                       "Received-SPF. Authenticated submission is never checked. DNS "
                       "goes to [outbound_tls] dns_resolver.")
    dns_budget_seconds: float = _f(10.0, "DNS time one message's checks may take "
                                   "together (SPF, DKIM keys, DMARC, reverse DNS); what is "
                                   "unanswered by then is a temperror, which never "
                                   "rejects.", min=0.1)
    dmarc_action: Literal["reject", "quarantine", "mark"] = _f(
        "reject", "What a DMARC failure does (RFC 7489 §6.6.2; per domain: `mailstack "
        "domain dmarc-action`): reject = follow the sender's policy (p=reject answers 550 "
        "5.7.1 after DATA, p=quarantine files in Junk); quarantine = both go to Junk; "
        "mark = only the Authentication-Results tell.",
        choices=("reject", "quarantine", "mark"))
    trusted_arc_sealers: str = _f("", "Forwarders (mailing lists) whose valid ARC chain "
                                  "(RFC 8617) overrides a DMARC failure: their ARC-Seal "
                                  "d= domains, comma separated.")


@dataclass(frozen=True)
class LoggingSettings:
    format: Literal["text", "json"] = _f(
        "text", "Server log on standard error: text (one line per event) or json (one "
        "JSON object per line, for log shippers). `serve --debug` adds library detail.",
        choices=("text", "json"))


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = _f(ServerSettings(), "The server as a whole.")
    tls: TlsSettings = _f(TlsSettings(), "Certificate and key.")
    listeners: ListenersSettings = _f(ListenersSettings(), "Listening sockets.")
    plans: dict[str, PlanSettings] = field(default_factory=_default_plans, metadata=doc(
        "Plans a domain can be on, with their limits. Defaults: free, starter, standard."))
    smtp: SmtpSettings = _f(SmtpSettings(), "SMTP limits.")
    auth: AuthSettings = _f(AuthSettings(), "Password hashing and brute-force protection.")
    imap: ImapSettings = _f(ImapSettings(), "IMAP server.")
    pop3: Pop3Settings = _f(Pop3Settings(), "POP3 server.")
    quota: QuotaSettings = _f(QuotaSettings(), "Storage quotas (the limits are per plan).")
    outbound: OutboundSettings = _f(OutboundSettings(), "Delivery to the internet: the "
                                    "queue runner, retries, reports, transport map.")
    importer: ImporterSettings = _f(ImporterSettings(), "Import of mailboxes from other "
                                    "providers over IMAP (`mailstack import`).")
    outbound_tls: OutboundTlsSettings = _f(OutboundTlsSettings(), "Transport security of "
                                           "outbound delivery: DANE, MTA-STS, TLS "
                                           "reporting.")
    web: WebSettings = _f(WebSettings(), "The HTTP side: auto-configuration, MTA-STS, "
                          "metrics.")
    autoresponder: AutoresponderSettings = _f(AutoresponderSettings(),
                                              "Out-of-office replies.")
    logging: LoggingSettings = _f(LoggingSettings(), "The server's log.")
    sender_auth: SenderAuthSettings = _f(SenderAuthSettings(), "Sender authentication "
                                         "of inbound mail: SPF, DKIM, DMARC, ARC.")

    # Derived paths -------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def database_url(self) -> str:
        if self.server.database_url:
            return self.server.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'mailstack.db'}"

    @property
    def cert_path(self) -> Path:
        if self.tls.cert_file:
            return Path(self.tls.cert_file)
        return self.acme_dir / "cert.pem" if self.tls.acme else self.data_dir / "tls/cert.pem"

    @property
    def key_path(self) -> Path:
        if self.tls.key_file:
            return Path(self.tls.key_file)
        return self.acme_dir / "key.pem" if self.tls.acme else self.data_dir / "tls/key.pem"

    @property
    def acme_dir(self) -> Path:
        """ACME account key, certificate and key (all 0600)."""
        return self.data_dir / "acme"

    @property
    def client_hostname(self) -> str:
        """The host name mail clients are told to use."""
        return self.web.advertised_hostname or self.server.hostname

    def plan(self, name: str) -> PlanSettings:
        return self.plans.get(name) or self.plans[self.smtp.default_plan]


# ---------------------------------------------------------------------------
# Loading and validation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_scalar(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(key, value, f"must be one of {', '.join(map(repr, choices))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "must be a number")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
    else:  # pragma: no cover - model error, not user error
        raise TypeError(f"unsupported settings type {tp!r} at {key}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, value, f"must be one of {', '.join(map(repr, meta['choices']))}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(key, value, f"must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(key, value, f"must be at most {meta['max']}")
    return value


def _build(cls: type, data: Any, prefix: str, errors: list[ConfigError],
           base: Any = None) -> Any:
    """Build dataclass ``cls`` from a TOML table, starting from ``base`` (or defaults).
    Every problem is appended to ``errors`` (the bad value keeps its default), so one
    run reports them all."""
    base = base if base is not None else cls()
    if not isinstance(data, dict):
        errors.append(ConfigError(prefix or "(top)", data, "must be a table"))
        return base
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            key = f"{prefix}.{k}" if prefix else k
            errors.append(ConfigError(key, data[k],
                                      f"unknown setting (known: {', '.join(names)})"))
    values: dict[str, Any] = {}
    for name, f in names.items():
        key = f"{prefix}.{name}" if prefix else name
        current = getattr(base, name)
        values[name] = current
        if name not in data:
            continue
        tp = hints[name]
        raw = data[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw, key, errors, current)  # type: ignore[arg-type]
        elif typing.get_origin(tp) is dict:
            if typing.get_args(tp)[1] is TransportRoute:
                values[name] = _build_routes(raw, key, errors)
            else:
                values[name] = _build_plans(raw, key, current, errors)
        else:
            try:
                values[name] = _check_scalar(key, raw, tp, dict(f.metadata))
            except ConfigError as exc:
                errors.append(exc)
    return cls(**values)


def _build_plans(raw: Any, key: str, current: dict[str, PlanSettings],
                 errors: list[ConfigError]) -> dict[str, PlanSettings]:
    if not isinstance(raw, dict):
        errors.append(ConfigError(key, raw, "must be a table of plans"))
        return current
    plans = dict(current)
    for name, table in raw.items():
        plans[name] = _build(PlanSettings, table, f"{key}.{name}", errors, current.get(name))
    return plans


def _build_routes(raw: Any, key: str, errors: list[ConfigError]
                  ) -> dict[str, TransportRoute]:
    if not isinstance(raw, dict):
        errors.append(ConfigError(key, raw, "must be a table of domain = \"host:port\" "
                                  "entries"))
        return {}
    from .outbound.hostport import parse_host_port

    routes = {}
    for name, value in raw.items():
        sub = f"{key}.{name}"
        if name != "*" and (not name or any(c in name for c in " \t\r\n/@:")):
            errors.append(ConfigError(sub, value, "the key must be a domain or \"*\""))
            continue
        route = (TransportRoute(host=value) if isinstance(value, str)
                 else _build(TransportRoute, value, sub, errors))
        if route.host:
            try:
                parse_host_port(route.host)
            except ValueError as exc:
                errors.append(ConfigError(f"{sub}.host", route.host, str(exc)))
        if route.auth_user and not route.auth_password_file:
            errors.append(ConfigError(f"{sub}.auth_password_file", "",
                                      "needed with auth_user"))
        routes[name.lower().rstrip(".") if name != "*" else name] = route
    return routes


def acme_methods(s: Settings) -> list[str]:
    """The ACME challenge types to try, in order (``tls.acme_challenge``): HTTP-01 needs
    listeners.http, TLS-ALPN-01 (RFC 8737) listeners.https."""
    usable = [m for m, ls in (("http-01", s.listeners.http), ("tls-alpn-01", s.listeners.https))
              if ls.enabled]
    if s.tls.acme_challenge == "auto":
        return usable
    return [m for m in usable if m == s.tls.acme_challenge]


def _cross_checks(s: Settings) -> list[ConfigError]:
    errors: list[ConfigError] = []
    if s.smtp.default_plan not in s.plans:
        errors.append(ConfigError("smtp.default_plan", s.smtp.default_plan,
                                  f"no such plan (plans: {', '.join(s.plans)})"))
    o = s.outbound
    try:
        schedule = o.retry_schedule()
    except ValueError:
        schedule = ()
    if not schedule or any(x <= 0 for x in schedule):
        errors.append(ConfigError("outbound.retry_schedule_minutes",
                                  o.retry_schedule_minutes,
                                  "must be positive numbers separated by commas"))
    if o.retry_max_hours < o.retry_min_hours:
        errors.append(ConfigError("outbound.retry_max_hours", o.retry_max_hours,
                                  "must be at least retry_min_hours"))
    if not s.server.hostname or any(c in s.server.hostname for c in " \t\r\n/@"):
        raise ConfigError("server.hostname", s.server.hostname, "must be a DNS host name")
    if s.tls.acme:
        methods = acme_methods(s)
        if not methods:
            raise ConfigError("tls.acme_challenge", s.tls.acme_challenge,
                              "needs listeners.http (http-01) or listeners.https "
                              "(tls-alpn-01) enabled: the ACME server validates through "
                              "them")
        if s.tls.acme_challenge != "auto" and s.tls.acme_challenge not in methods:
            listener = "http" if s.tls.acme_challenge == "http-01" else "https"
            raise ConfigError("tls.acme_challenge", s.tls.acme_challenge,
                              f"needs listeners.{listener} enabled: the ACME server "
                              "validates through it")
    for name in ("http", "metrics"):
        if getattr(s.listeners, name).tls != "none":
            raise ConfigError(f"listeners.{name}.tls", getattr(s.listeners, name).tls,
                              "must be \"none\" (plain HTTP)")
    if s.listeners.https.tls != "implicit":
        raise ConfigError("listeners.https.tls", s.listeners.https.tls,
                          "must be \"implicit\" (HTTPS is TLS from the first byte)")
        errors.append(ConfigError("server.hostname", s.server.hostname,
                                  "must be a DNS host name"))
    url = s.server.database_url
    if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        errors.append(ConfigError("server.database_url", url,
                                  "must start with sqlite+aiosqlite:// or "
                                  "postgresql+asyncpg://"))
    return errors


def settings_from_dict(data: dict[str, Any]) -> Settings:
    errors: list[ConfigError] = []
    settings: Settings = _build(Settings, data, "", errors)
    errors += _cross_checks(settings)
    if errors:
        raise ConfigError.several(errors)
    return settings


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read and validate a TOML file; ``None`` gives the built-in defaults."""
    if path is None:
        return settings_from_dict({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", str(p), f"cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", str(p), f"not valid TOML: {exc}") from exc
    return settings_from_dict(data)


def find_config_file(explicit: str | None) -> str | None:
    """``--config FILE``, else ``$MAILSTACK_CONFIG``, else ``./mailstack.toml``, else None."""
    if explicit:
        return explicit
    env = os.environ.get("MAILSTACK_CONFIG")
    if env:
        return env
    if Path("mailstack.toml").is_file():
        return "mailstack.toml"
    return None


# ---------------------------------------------------------------------------
# The annotated example, generated from the model


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(v)


def _toml_key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum() and name.isascii()
    return name if bare else _toml_value(name)


def _comment(text: str) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for w in words:
        if len(line) + 1 + len(w) > 88:
            lines.append(line)
            line = "#"
        line += " " + w
    lines.append(line)
    return lines


def _render_table(obj: Any, header: str, out: list[str]) -> None:
    hints = _hints(type(obj))
    scalars = [f for f in dataclasses.fields(obj) if not dataclasses.is_dataclass(hints[f.name])
               and typing.get_origin(hints[f.name]) is not dict]
    if scalars:
        out.append(f"[{header}]")
        for f in scalars:
            out.extend(_comment(f.metadata["doc"]))
            out.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        out.append("")
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        sub = f"{header}.{f.name}" if header else f.name
        if dataclasses.is_dataclass(tp):
            out.extend(_comment(f.metadata["doc"]))
            _render_table(getattr(obj, f.name), sub, out)
        elif typing.get_origin(tp) is dict:
            out.extend(_comment(f.metadata["doc"]))
            for name, plan in getattr(obj, f.name).items():
                _render_table(plan, f"{sub}.{_toml_key(name)}", out)


def render_example() -> str:
    out = [
        "# mailstack configuration: every setting with its default and meaning.",
        "# Generated from mailstack/config.py (`mailstack config-example`); a test keeps",
        "# the two in step. Copy to ./mailstack.toml or point MAILSTACK_CONFIG at it.",
        "",
    ]
    _render_table(Settings(), "", out)
    return "\n".join(out).rstrip() + "\n"


def dev_settings(base: Settings) -> Settings:
    """``serve --dev``: loopback, standard port + 10000 (passwords still need TLS)."""
    ls = base.listeners
    moved = {
        f.name: dataclasses.replace(getattr(ls, f.name), address="127.0.0.1",
                                    port=getattr(ls, f.name).port + 10000)
        for f in dataclasses.fields(ls)
    }
    web = base.web
    if not web.advertised_hostname:  # the dev certificate names localhost
        web = dataclasses.replace(web, advertised_hostname="localhost")
    return dataclasses.replace(base, listeners=ListenersSettings(**moved), web=web)

