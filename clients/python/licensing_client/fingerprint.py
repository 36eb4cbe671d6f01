"""A stable, anonymised client id per machine and app."""

from __future__ import annotations

import machineid


def machine_fingerprint(app_id: str) -> str:
    """The machine's id (e.g. /etc/machine-id, the Windows MachineGuid, the macOS platform
    UUID) as an HMAC-SHA256 keyed by `app_id`: 64 hex characters, the same at every start
    on this machine, different for each app, and revealing nothing of the machine's id."""
    if not app_id:
        raise ValueError("app_id is required: it keeps one app's id from being another's")
    return machineid.hashed_id(app_id)
