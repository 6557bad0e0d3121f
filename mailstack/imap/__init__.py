"""mailstack.imap

Our IMAP4rev2 / IMAP4rev1 server (RFC 9051, RFC 3501) over the shared store: the pure
parser (``lexer``, ``parser``, ``search``, ``fetch_items``, ``sequence``, ``mutf7``,
``types``), the listener and read loop (``server``), the session state machine
(``session``, ``commands*``), the selected mailbox's view (``mailbox_view``), FETCH
(``fetch``), SEARCH (``search_exec``) and response encoding (``respond``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstack.config import ListenerSettings

if TYPE_CHECKING:
    from mailstack.imap.server import ImapServer
    from mailstack.services import Services


def build(services: Services, name: str, role: str,
          listener_settings: ListenerSettings) -> ImapServer:
    """The app root's entry point: one IMAP listener (role "imap")."""
    from mailstack.imap.server import ImapServer

    return ImapServer(services, name, listener_settings)
