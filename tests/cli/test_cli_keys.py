"""The CLI's client commands against a live server that needs an API key (MINIVAULT_API_KEY)."""

from __future__ import annotations

from typer.testing import CliRunner

from service.cli.main import app
from tests.support.server import read_log

runner = CliRunner()  # stdout and stderr kept apart
KEY = "cli-test-key-98765432"


def test_generate_sends_minivault_api_key(start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_API_KEYS=KEY)
    args = ["generate", "Hello", "--url", server.url, "--max-new-tokens", "3"]
    refused = runner.invoke(app, args, env={"MINIVAULT_API_KEY": ""})
    assert refused.exit_code == 4 and refused.stdout == ""
    assert "request rejected (401)" in refused.stderr and "API key" in refused.stderr
    wrong = runner.invoke(app, args, env={"MINIVAULT_API_KEY": "not-the-key-000"})
    assert wrong.exit_code == 4 and "the API key is not valid" in wrong.stderr and "not-the-key-000" not in wrong.stderr
    ok = runner.invoke(app, args, env={"MINIVAULT_API_KEY": KEY})
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.strip() and ok.stderr == ""
    server.stop()
    (record,) = read_log(server.log_file)
    assert record["key_id"] and record["status"] == "ok"
