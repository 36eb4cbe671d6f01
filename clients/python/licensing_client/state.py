"""The app's license state in a file of its choosing: written atomically, mode 0600."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON: a temporary file in the same folder (0600),
    flushed to disk, then renamed over the old one, so a reader sees the old or the new
    state and never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path | None) -> dict[str, Any]:
    """The file's object, or {} when there is none (or it is not a JSON object)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StateFile:
    """token, client_id, license_id, last_server_time, last_online_success (local clock,
    epoch seconds) and last_code (the last online answer). In memory only when `path` is
    None. Callers hold the client's lock."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._data: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        if self._data is None:
            self._data = read_json(self.path)
        return dict(self._data)

    def update(self, **changes: Any) -> dict[str, Any]:
        data = {**self.load(), **changes}
        if self.path is not None:
            write_private(self.path, data)
        self._data = data
        return dict(data)

    def clear(self) -> None:
        self._data = {}
        if self.path is not None:
            write_private(self.path, {})
