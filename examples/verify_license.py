# verify_license.py TOKEN JWKS_FILE: check a license token offline
import json
import sys
from pathlib import Path

import jwt

token, jwks = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
kid = jwt.get_unverified_header(token)["kid"]
key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
claims = jwt.decode(token, key, algorithms=["EdDSA"], issuer="licensing-platform")
print(claims["license_id"], claims["client_id"], claims["exp"])
