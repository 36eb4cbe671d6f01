# licensed_app.py URL [STATE_FILE]: an app that activates once and checks its license at start-up.
# pip install -e clients/python   (the licensing-client library)
import getpass
import sys

from licensing_client import CheckCode, LicensingClient, LicensingError, machine_fingerprint

APP_ID = "com.example.editor"  # yours: it keeps this app's machine id apart from others'


def main() -> int:
    url = sys.argv[1]
    state = sys.argv[2] if len(sys.argv) > 2 else "license.json"
    with LicensingClient(url, state_path=state) as licensing:
        try:
            if licensing.stored_token() is None:  # first start on this machine
                email = input("email: ")
                licensing.activate(
                    machine_fingerprint(APP_ID), email=email, password=getpass.getpass()
                )
            result = licensing.check()
        except LicensingError as exc:  # wrong password, no free seat, service unreachable…
            print(f"cannot license this copy: {exc}", file=sys.stderr)
            return 2
    if result.code is CheckCode.VALID:
        how = "online" if result.online else f"offline ({result.offline_reason})"
        print(f"licensed until {result.expires_at:%Y-%m-%d}, checked {how}")
        return 0
    print(f"not licensed: {result.code.value}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
