"""operations: what an operator runs beside the modules — verified backups (`backups.py`,
`backup_engines.py`; `flask backup …` in `cli.py`) and health (`/healthz`, `/readyz`,
security headers: `health.py`). It owns no tables; backups copy every table as the operator.
"""
