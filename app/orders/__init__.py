"""orders: plans, orders, payments, renewals.

It will own `orders` and `idempotency_keys` (DESIGN §2); those tables arrive with the orders
issue, and the declaration grows with them. Other modules use it only through
`app.orders.api`.
"""

from app.kernel.ownership import registry

MODULE = "orders"
declaration = registry.declare(MODULE, owns=set(), reads=set())
