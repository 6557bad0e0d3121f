"""mailstack: a mail hosting stack (SMTP, IMAP, POP3) over one store and one policy layer."""

__version__ = "0.1.0"
