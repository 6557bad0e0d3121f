"""Import of whole mailboxes from another provider over IMAP (docs/behaviour.md §9):
``plan`` (pure: folder mapping, response parsing, batches), ``source`` (the IMAP client
session, in a thread), ``runner`` (jobs inside ``mailstack serve``), ``report`` (the
confirmation message) and ``secret`` (source passwords encrypted at rest)."""
