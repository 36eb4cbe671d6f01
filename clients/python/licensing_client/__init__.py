"""licensing-client: the library an app embeds to hold its license.

from licensing_client import LicensingClient, machine_fingerprint

client_id = machine_fingerprint("com.example.editor")
with LicensingClient("https://licensing.example.com", state_path="license.json") as lc:
    if lc.stored_token() is None:
        lc.activate(client_id, email=..., password=...)
    result = lc.check()
    if not result.valid:
        ...
"""

from licensing_client.client import LicensingClient
from licensing_client.errors import (
    AccountLocked,
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    LicensingError,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnreachable,
    Unauthorized,
    UntrustedAnswer,
)
from licensing_client.fingerprint import machine_fingerprint
from licensing_client.results import Activation, CheckCode, CheckResult, Code, License, Validation

__all__ = [
    "AccountLocked",
    "Activation",
    "ApiError",
    "CheckCode",
    "CheckResult",
    "Code",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "License",
    "LicensingClient",
    "LicensingError",
    "NotFound",
    "RateLimited",
    "ServerError",
    "ServiceUnreachable",
    "Unauthorized",
    "UntrustedAnswer",
    "Validation",
    "machine_fingerprint",
]
