"""compose.yaml's two ways to run (one `api`, or `replica` x N behind `lb`) and the LB's HAProxy config.

No container engine needed: the file is read as Compose reads it (YAML merge keys), and the
config is checked by Debian's haproxy itself where it is installed (skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LB = ROOT / "docker" / "haproxy"


def services() -> dict[str, dict]:
    with (ROOT / "compose.yaml").open(encoding="utf-8") as f:
        return yaml.safe_load(f)["services"]


def test_replicas_are_the_api_definition_with_their_own_logs():
    s = services()
    api, replica = s["api"], s["replica"]
    assert "profiles" not in api and replica["profiles"] == ["replicas"] == s["lb"]["profiles"]
    assert "ports" not in replica, "replicas are reached through the LB only"
    same = {k: v for k, v in api.items() if k not in ("ports", "environment")}
    assert same == {k: v for k, v in replica.items() if k not in ("profiles", "environment")}
    assert {k: v for k, v in replica["environment"].items() if k not in api["environment"]} == {
        "MINIVAULT_REPLICA": "auto", "MINIVAULT_LOG_FILE": "/logs/{replica}/log.jsonl"}
    assert any(v.endswith(":/models:ro") for v in replica["volumes"]), "models shared read-only"


def test_the_allowed_hosts_name_the_lb_and_localhost():
    env = services()["api"]["environment"]
    hosts = re.fullmatch(r"\$\{MINIVAULT_ALLOWED_HOSTS:-(.*)\}", env["MINIVAULT_ALLOWED_HOSTS"]).group(1).split(",")
    assert {"localhost", "127.0.0.1", "lb", "replica"} <= set(hosts)


def test_the_hub_cache_is_a_named_volume_at_the_images_hf_home():
    with (ROOT / "compose.yaml").open(encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    hf_home = re.search(r"HF_HOME=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert f"hf-cache:{hf_home}" in compose["services"]["init"]["volumes"]
    assert "hf-cache" in compose["volumes"]
    assert not hf_home.startswith("/tmp")


def test_the_entrypoint_names_each_replicas_log(tmp_path):
    """docker/entrypoint.sh as a non-root user: `auto` -> the host name, `{replica}` filled in."""
    if os.getuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh"]
    else:
        cmd = ["sh"]
    env = {"PATH": os.environ["PATH"], "MINIVAULT_REPLICA": "auto", "MINIVAULT_LOG_FILE": "/logs/{replica}/log.jsonl"}
    script = str(ROOT / "docker" / "entrypoint.sh")
    out = subprocess.run([*cmd, script, "sh", "-c", 'echo "$MINIVAULT_REPLICA $MINIVAULT_LOG_FILE"'],
                         env=env, capture_output=True, text=True, timeout=30, check=True).stdout.split()
    host = Path("/proc/sys/kernel/hostname").read_text().strip()
    assert out == [host, f"/logs/{host}/log.jsonl"]
    missing = subprocess.run([*cmd, script, "true"], env=env | {"MINIVAULT_REPLICA": ""},
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "set MINIVAULT_REPLICA" in missing.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy on PATH (apt-get install haproxy)")
def test_haproxy_accepts_the_lb_config_and_balances_by_least_connections():
    env = os.environ | {"MINIVAULT_LB_MAXCONN": "17", "MINIVAULT_LB_QUEUE_TIMEOUT_S": "10",
                        "MINIVAULT_LB_BACKEND": "localhost"}
    proc = subprocess.run(["haproxy", "-c", "-f", str(LB / "haproxy.cfg")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "Configuration file is valid" in proc.stdout + proc.stderr, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    config = (LB / "haproxy.cfg").read_text()
    for line in ("balance leastconn", "option redispatch 1", "option http-buffer-request"):
        assert re.search(rf"^\s+{re.escape(line)}$", config, re.M), line
    assert re.search(r"^\s+retry-on .*\bconn-failure\b.*\b503\b", config, re.M)
