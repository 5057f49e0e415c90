"""The daemon image's HEALTHCHECK: exit 0 if ``GET /livez`` on the health port answers 200, else 1.

Standard library only (the slim image has no curl). The port is ``EVENTQ_HEALTH_PORT``
(default 8080), or the first argument; anything else in it is a clear one-line error.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    raw = argv[1] if len(argv) > 1 else os.environ.get("EVENTQ_HEALTH_PORT", "8080")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        print(f"healthcheck: EVENTQ_HEALTH_PORT={raw[:20]!r} is not a port (1-65535)", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{int(raw)}/livez"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 - a fixed loopback http URL
            ok = answer.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
