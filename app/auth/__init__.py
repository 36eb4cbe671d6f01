"""auth: users, credentials, tokens, licenses, subscriptions.

Other modules use it only through `app.auth.api`.
"""

from app.kernel.ownership import registry

MODULE = "auth"
declaration = registry.declare(MODULE, owns={"users"}, reads=set())
