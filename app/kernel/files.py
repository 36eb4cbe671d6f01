"""Private files: the SQLite database, generated secrets and keys, the sandbox ledger.

They hold password hashes, emails, secrets and money, so they are created readable by
their owner only (0600) in folders only their owner can enter (0700), whatever the umask:
the mode is set explicitly after creation, not left to `mode & ~umask`. Files that already
exist keep their mode (an operator may have chosen it); `warn_if_exposed` says when one is
readable by others.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a folder; created (with any missing parents) 0700 when it did not exist."""
    path = Path(path)
    if path.is_dir():
        return path
    private_dir(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return path  # made by another process meanwhile
    os.chmod(path, DIR_MODE)
    return path


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create `path` empty with mode 0600 (its folder 0700 if new); False if it existed."""
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def open_private(path: str | os.PathLike[str], mode: str = "a+"):
    """`open(path, mode)` for a file created 0600 (in a 0700 folder) if it does not exist."""
    create_private_file(path)
    return open(path, mode)


def instance_secret(folder: str | os.PathLike[str], name: str) -> tuple[str, bool]:
    """The secret kept in `folder/name`, generated (48 random bytes, URL-safe) on first use.

    Returns (secret, generated). Safe when several processes start at once: the secret is
    written to a private temporary file and linked into place, so every process reads the
    one that won, complete.
    """
    path = private_dir(folder) / name
    generated = False
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                generated = True
            except FileExistsError:
                pass  # another process made it first; use theirs
        finally:
            os.unlink(tmp)
    warn_if_exposed(path)
    return path.read_text().strip(), generated


def exposed(path: str | os.PathLike[str]) -> bool:
    """True when `path` exists and others than its owner may read or write it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a path that cannot exist: opening it will say why
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


@functools.cache
def warn_if_exposed(path: str | os.PathLike[str]) -> bool:
    """Log a warning (once per process and file) when `path` is readable by others."""
    if not exposed(path):
        return False
    mode = stat.S_IMODE(os.stat(path).st_mode)
    log.warning(
        "%s is readable by other users (mode %04o): it holds private data; "
        "restrict it with: chmod 600 %s",
        path,
        mode,
        path,
    )
    return True
