"""Accounts: users, passwords, access and refresh tokens, login lockout.

`service.py` registers users and settles logins, `revocations.py` keeps the token revocation
list, `tokens.py` makes the JWTs, `routes.py` is the HTTP API, `cli.py` the `users` and
`tokens` commands. Licensing reaches this package only through `service.py` (and the password
rules in `passwords.py`: activation by email and password is a login).
"""
