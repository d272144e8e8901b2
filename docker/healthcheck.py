"""Container health check: exit 0 only if GET /health answers 200 with status "ok" and its
default model is not loading or failed (a model let go when idle loads again on its next request).

Standard library only (the image has no curl). Docker runs it as the container's
configured user, which is root here (the entrypoint drops privileges for the server
only), so it first steps down to `nobody`: a probe has no reason to run as root.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.0  # below the HEALTHCHECK timeout, so a hung server reads as unhealthy, not as a killed probe
NOBODY = 65534


def drop_root() -> None:
    """Run as nobody when started as root (and allowed to change user)."""
    if os.getuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    except PermissionError:  # capabilities dropped (cap_drop: ALL): probe as we are
        pass


def main() -> int:
    """Probe the server on the loopback address; print why it is unhealthy."""
    drop_root()
    port = os.environ.get("MINIVAULT_PORT") or "8000"
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:  # 503 while draining
        status, body = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:  # refused, timed out, reset
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    try:
        health = json.loads(body)
        state, model = health.get("status"), health.get("state")
    except (ValueError, AttributeError):
        state = model = None
    if status == 200 and state == "ok" and model in (None, "loaded", "unloaded"):
        return 0
    print(f"unhealthy: {url} answered {status} {body[:200].decode('utf-8', 'replace')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
