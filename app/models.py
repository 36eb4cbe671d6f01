"""Every model, imported once so the metadata (migrations, checks) sees all tables.

Only migrations and the consistency checks use this; modules import their own models.
"""

from app.admin import models as admin_models
from app.auth import models as auth_models
from app.auth.accounts import browser_sessions as auth_browser_sessions
from app.kernel import models as kernel_models
from app.kernel.db import Base
from app.orders import models as orders_models
from app.webhooks import models as webhooks_models

metadata = Base.metadata

__all__ = [
    "admin_models",
    "auth_browser_sessions",
    "auth_models",
    "kernel_models",
    "metadata",
    "orders_models",
    "webhooks_models",
]
