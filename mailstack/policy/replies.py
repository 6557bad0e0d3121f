"""What every SMTP-facing verdict and refusal has in common: a reply code, an RFC 3463
enhanced status code and a text, rendered as one reply line."""

from __future__ import annotations


class HasReply:
    """Mixin for frozen dataclasses (and exceptions) with ``code``, ``enhanced``, ``text``."""

    code: int
    enhanced: str
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class SmtpRefusal(ValueError, HasReply):
    """A refusal raised while parsing or checking, carrying the reply to send."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text
