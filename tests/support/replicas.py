"""compose.yaml's `replicas` profile on a container engine: N API replicas behind HAProxy.

Shared by tests/test_container_replicas.py and tests/benchmarks/bench_replicas.py.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import httpx

from tests.support.server import free_port, read_log
from tests.test_container import Stack, run, wait_healthy

LB_DIR = Path(__file__).resolve().parents[2] / "docker" / "haproxy"


def build_lb(tag: str) -> None:
    """The load balancer's image from docker/haproxy (Debian's HAProxy on the same base)."""
    run(["docker", "build", "--tag", tag, str(LB_DIR)], timeout=900)


class Replicas(Stack):
    """The repo's compose.yaml with `--profile replicas`: `replica` scaled behind `lb`."""

    def __init__(self, image: str, lb_image: str, root: Path, **settings: str) -> None:
        super().__init__(image, root)
        self.compose += ["--profile", "replicas"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env |= {"MINIVAULT_LB_IMAGE": lb_image, "MINIVAULT_LB_PORT": str(self.port)} | settings

    def scale(self, n: int, timeout: float = 120) -> list[str]:
        """Run n replicas (and the LB); return once all are healthy and HAProxy has all n up."""
        self("up", "--detach", "--no-build", "--scale", f"replica={n}", "lb", timeout=timeout + 60)
        ids = self.replicas()
        assert len(ids) == n, ids
        for container in ids:
            wait_healthy(container, timeout)
        deadline = time.monotonic() + timeout
        while (up := self.servers_up()) != n:
            assert time.monotonic() < deadline, f"HAProxy sees {up} replicas up, not {n}"
            time.sleep(0.3)
        return ids

    def replicas(self) -> list[str]:
        """The running replica containers' ids."""
        return self("ps", "-q", "replica").stdout.split()

    def hostname(self, container: str) -> str:
        return json.loads(run(["docker", "inspect", container]).stdout)[0]["Config"]["Hostname"]

    def log_of(self, container: str) -> Path:
        """The replica's own log: logs/<its host name>/log.jsonl."""
        return self.logs / self.hostname(container) / "log.jsonl"

    def servers_up(self) -> int:
        """Replicas HAProxy currently routes to (its stats page, read inside the LB container)."""
        probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8404/stats;csv', timeout=2).read().decode())"
        proc = run(["docker", "exec", self.container("lb"), "python3", "-c", probe], check=False, timeout=30)
        if proc.returncode != 0:
            return -1
        rows = csv.DictReader(io.StringIO(proc.stdout.lstrip("# ")))
        return sum(1 for r in rows if r["pxname"] == "replicas" and r["svname"].startswith("replica")
                   and r["status"] == "UP")

    def counts(self) -> dict[str, int]:
        """Log records per replica host name, over every replica log in the logs dir."""
        return {p.parent.name: len(read_log(p)) for p in sorted(self.logs.glob("*/log.jsonl"))}


def tokens_per_second(client: httpx.Client) -> float:
    """This replica set's decode speed now (one request), to size the streams."""
    r = client.post("/generate", json={"prompt": "speed", "max_new_tokens": 32, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["timings"]["tokens_per_second"]
