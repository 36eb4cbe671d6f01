"""The problems licensing raises (each a problem+json answer), and the license statuses with
their allowed changes, which InvalidTransition spells out."""

from __future__ import annotations

from app.kernel.errors import Conflict, NotFound, ProblemError

STATUSES = ("active", "suspended", "revoked")

# Allowed status changes. revoked is final.
TRANSITIONS = {
    "active": {"suspended", "revoked"},
    "suspended": {"active", "revoked"},
    "revoked": set(),
}


class ClientIdTaken(Conflict):
    code = "client_id_taken"
    detail = "This client_id is already bound to another account's license."


class SeatLimitReached(Conflict):
    code = "seat_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(f"All {limit} seat(s) of the plan are in use.", seats_limit=limit)


class SubscriptionPastDue(Conflict):
    code = "subscription_past_due"
    detail = (
        "The subscription's paid period is over (its renewal is due or was declined); "
        "renew it or buy a plan, then activate."
    )


class LicenseSuspended(Conflict):
    code = "license_suspended"
    detail = "This client's license is suspended."


class LicenseNotFound(NotFound):
    code = "license_not_found"

    def __init__(self, license_id: str | None = None) -> None:
        extra = {"license_id": license_id} if license_id else {}
        super().__init__("No such license.", **extra)


class VersionConflict(ProblemError):
    status, code = 412, "version_conflict"

    def __init__(self, current_version: int | None = None, license_id: str | None = None) -> None:
        super().__init__(
            "The license was changed by someone else; reload it and try again.",
            current_version=current_version,
            license_id=license_id,
        )


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, old: str, new: str, license_id: str | None = None) -> None:
        allowed = ", ".join(sorted(TRANSITIONS.get(old, ()))) or "none (final)"
        super().__init__(
            f"A license cannot go from {old} to {new}; from {old} it may go to: {allowed}.",
            from_status=old,
            to_status=new,
            license_id=license_id,
        )
