"""The shared kernel: the only code every module may import.

It holds the database plumbing (engines, sessions, transactions), the table-ownership
registry and its runtime guard, the problem+json error types and the event outbox.
It never imports a module (an import-linter contract enforces that).
"""
