"""Failpoints: named places where a test can make this process die for real.

`FAILPOINTS=outbox.relay.after_publish` (comma-separated names) in the environment of a
non-production process makes `failpoint("outbox.relay.after_publish")` SIGKILL the process
at that exact point — no cleanup, no `finally`, as a power cut or the OOM killer would.
The fault tests use it to stop a relay between publishing and marking, or a consumer
between applying and acknowledging. Production ignores the variable.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    """Die here (SIGKILL) when the FAILPOINTS environment variable names this point."""
    armed = os.environ.get("FAILPOINTS")
    if not armed or os.environ.get("APP_ENV", "development") == "production":
        return
    if name in (point.strip() for point in armed.split(",")):
        os.kill(os.getpid(), signal.SIGKILL)
