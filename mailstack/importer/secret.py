"""The source password of an import job, encrypted at rest (docs/behaviour.md §9).

A job must survive a restart of the server, so its source password is kept in the
database until the job ends, encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``) under a key in the data directory (``importer.key``, mode 0600, made
on first use). The database alone (a backup, a dump) does not reveal the password.
Several nodes on PostgreSQL need the same key file on each node.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "importer.key"


class SecretError(Exception):
    """The stored password cannot be read back (the key file changed or is missing)."""


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_key(data_dir: Path, *, create: bool) -> bytes:
    path = key_path(data_dir)
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise SecretError(f"{path} is missing: the job's source password cannot be "
                              "read; start the import again") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def seal(data_dir: Path, password: str) -> str:
    return Fernet(load_key(data_dir, create=True)).encrypt(password.encode()).decode()


def unseal(data_dir: Path, token: str) -> str:
    try:
        return Fernet(load_key(data_dir, create=False)).decrypt(token.encode()).decode()
    except (InvalidToken, ValueError) as exc:
        raise SecretError(f"the job's source password cannot be decrypted with "
                          f"{key_path(data_dir)}: start the import again") from exc
