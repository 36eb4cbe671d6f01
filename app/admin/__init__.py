"""admin: the audit log, statistics, license administration.

Admin owns `audit_logs` and may only read auth's tables. Other modules use it only
through `app.admin.api`.
"""

from app.kernel.ownership import registry

MODULE = "admin"
declaration = registry.declare(
    MODULE, owns={"audit_logs"}, reads={"users", "token_revocations", "licenses", "subscriptions"}
)
