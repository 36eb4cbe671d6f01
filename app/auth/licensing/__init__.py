"""Licensing: licenses, seats, subscriptions, signed tokens, validation verdicts.

`service.py` activates, validates (a `Verdict`), reads and changes licenses; `subscriptions.py`
grants, cancels, renews and lapses subscriptions; `seats.py` counts seats; `signing.py` signs
license tokens and verdicts (Ed25519); `routes.py` is the HTTP API, `cli.py` the `licenses`
commands. Accounts reach this package only through `service.py`.
"""
