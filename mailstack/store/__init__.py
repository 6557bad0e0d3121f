"""The store: the only code that touches SQL or message files.

``Store`` combines the mixins; open it with ``await Store.open_from_settings(s)`` or
``Store(url, blob_root)`` + ``await store.open()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from .accounts import SPECIAL_FOLDERS, AccountsMixin, NewAddressRecord, split_address
from .autoresponder import AutoResponder, AutoresponderMixin
from .base import (
    SYSTEM_FLAGS,
    ActivityEntry,
    Address,
    Alias,
    AlreadyExists,
    Conflict,
    Domain,
    Folder,
    FolderStatus,
    InsufficientStorage,
    LimitReached,
    Message,
    NotFound,
    StoreError,
    Unavailable,
)
from .certs import CertsMixin, StoredCertificate
from .credentials import MAIN_PASSWORD, CredentialsMixin
from .dkim import DkimKey, DkimMixin, NewDkimKey
from .events import (
    AddressDeleted,
    AutorespondersChanged,
    CredentialRevoked,
    CredentialsChanged,
    Event,
    FlagsChanged,
    FolderChanged,
    MessagesAdded,
    MessagesExpunged,
    Resync,
    SendersChanged,
    Subscription,
)
from .gc import GcMixin
from .imap import ImapMixin, MsgRow, OpenedFolder
from .importer import FolderProgress, ImportedMessage, ImportJob, ImportMixin, NewImportJob
from .mailbox import DeliveryTarget, MailboxMixin, normalize_folder_name
from .queue import NO_DSN, DsnRequest, QueuedMessage, QueueMixin
from .senderauth import DMARC_ACTIONS, SenderAuthMixin
from .smtp import SmtpMixin
from .sortkeys import HeaderKeys, SortKeyRow, SortKeysMixin, ThreadRow, Unkeyed
from .throttle import NETWORK_WIDE, ThrottleFacts, ThrottleMixin
from .transport import CachedStsPolicy, TlsResultKey, TransportMixin
from .users import Grant, User, UsersMixin, WebSession


class Store(SmtpMixin, CredentialsMixin, AccountsMixin, ImapMixin, SortKeysMixin,
            ImportMixin, MailboxMixin, QueueMixin, GcMixin, TransportMixin, CertsMixin,
            DkimMixin, AutoresponderMixin, ThrottleMixin, UsersMixin, SenderAuthMixin):
    @classmethod
    async def open_from_settings(cls, settings: Settings,
                                 clock: Callable[[], float] = time.time, *,
                                 listen: bool = True) -> Store:
        """``listen``: follow other processes' and nodes' changes (servers do; a CLI
        command, which only writes, does not need to)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = cls(settings.database_url, Path(settings.data_dir) / "blobs", clock=clock)
        store.queue_lifetime = settings.outbound.lifetime_seconds
        await store.open(listen=listen)
        return store


__all__ = [
    "DMARC_ACTIONS",
    "MAIN_PASSWORD",
    "NETWORK_WIDE",
    "NO_DSN",
    "SPECIAL_FOLDERS",
    "SYSTEM_FLAGS",
    "ActivityEntry",
    "Address",
    "AddressDeleted",
    "Alias",
    "AlreadyExists",
    "AutoResponder",
    "AutorespondersChanged",
    "CachedStsPolicy",
    "Conflict",
    "CredentialRevoked",
    "CredentialsChanged",
    "DeliveryTarget",
    "DkimKey",
    "Domain",
    "DsnRequest",
    "Event",
    "FlagsChanged",
    "Folder",
    "FolderChanged",
    "FolderProgress",
    "FolderStatus",
    "Grant",
    "HeaderKeys",
    "ImportJob",
    "ImportedMessage",
    "InsufficientStorage",
    "LimitReached",
    "Message",
    "MessagesAdded",
    "MessagesExpunged",
    "MsgRow",
    "NewAddressRecord",
    "NewDkimKey",
    "NewImportJob",
    "NotFound",
    "OpenedFolder",
    "QueuedMessage",
    "Resync",
    "SendersChanged",
    "SortKeyRow",
    "Store",
    "StoreError",
    "StoredCertificate",
    "Subscription",
    "ThreadRow",
    "ThrottleFacts",
    "TlsResultKey",
    "Unavailable",
    "Unkeyed",
    "User",
    "WebSession",
    "normalize_folder_name",
    "split_address",
]
