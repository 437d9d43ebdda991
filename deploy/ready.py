"""Wait until the desk's /readyz answers 200, printing what still fails; exit 1 at the timeout.

python deploy/ready.py http://127.0.0.1:8000/readyz [--timeout 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    said = ""
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=10):
                print(f"ready: {args.url}", flush=True)
                return 0
        except urllib.error.HTTPError as answer:
            try:
                failing = "; ".join(json.loads(answer.read() or b"{}").get("failing", []))
            except ValueError:
                failing = f"HTTP {answer.code}"
        except OSError as exc:
            failing = f"no answer ({exc})"
        if failing != said:
            print(f"not ready yet: {failing}", flush=True)
            said = failing
        if time.monotonic() > deadline:
            print(f"not ready after {args.timeout:.0f} s: {failing}", file=sys.stderr, flush=True)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
