"""A real Prometheus server (Debian's `prometheus`) scrapes a live MiniVault that needs an API key."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port, new_records

PROMETHEUS = shutil.which("prometheus")
KEY = "scrape-key-0123456789"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="no `prometheus` binary: apt-get install prometheus (.ci/run does)"),
]


class Prometheus:
    """A Prometheus process scraping one target every second, with its HTTP API on 127.0.0.1."""

    def __init__(self, root: Path, target: str, bearer: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: minivault\n"
            f"    authorization:\n      type: Bearer\n      credentials: {bearer}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(root / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float, timeout: float = 30) -> float | None:
        """Poll until the query gives `expected` (scrapes land every second); the last value seen."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.scalar(promql)
            except httpx.HTTPError:  # still starting
                seen = None
            if seen == expected:
                return seen
            time.sleep(0.5)
        return seen

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_scrapes_request_counts_and_ttft(tmp_path, start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_API_KEYS=KEY, MINIVAULT_WORKERS=2)
    prom = Prometheus(tmp_path, f"127.0.0.1:{server.port}", KEY)
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
            for i in range(4):
                assert c.post("/generate", json={"prompt": f"Hello {i}", "max_new_tokens": 4}).status_code == 200
            for i in range(3):
                with c.stream("POST", "/generate/stream", json={"prompt": f"Once {i}", "max_new_tokens": 4}) as r:
                    assert r.status_code == 200 and r.read()
            assert c.post("/generate", json={"prompt": "x", "top_p": 2}).status_code == 422
            assert httpx.post(server.url + "/generate", json={"prompt": "no key"}).status_code == 401
        records = new_records(server.log_file, 0, count=7)
        completed = sum(1 for rec in records if rec["status"] == "ok" and rec["usage"]["completion_tokens"] > 0)
        assert len(records) == 7 and completed == 7, records

        up = prom.wait_for('up{job="minivault"}', 1)
        assert up == 1, f"Prometheus never scraped MiniVault: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        sent = prom.wait_for('sum(minivault_requests_total{status="ok"})', 7)
        assert sent == 7
        assert prom.scalar('sum(minivault_requests_total{endpoint="/generate/stream", status="ok"})') == 3
        assert prom.wait_for('sum(minivault_requests_total{status="refused_422"})', 1) == 1
        assert prom.wait_for('sum(minivault_requests_total{status="refused_401"})', 1) == 1
        assert prom.wait_for('sum(minivault_time_to_first_token_seconds_count{model="tiny"})', completed) == completed
        generated = sum(rec["usage"]["completion_tokens"] for rec in records)
        assert prom.wait_for("sum(minivault_generation_tokens_total)", generated) == generated
        # a quantile Prometheus computes from the buckets lies within the buckets' range
        p50 = prom.scalar("histogram_quantile(0.5, sum by (le) (minivault_time_to_first_token_seconds_bucket))")
        assert p50 is not None and 0 < p50 <= 600
        (info,) = prom.query("minivault_build_info")
        assert info["metric"]["engine"] == "ctransformers" and info["metric"]["version"] == "0.1.0"
    finally:
        prom.stop()
