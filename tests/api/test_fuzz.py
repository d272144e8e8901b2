"""Property-based fuzzing of the served OpenAPI schema with schemathesis, against a live server.

Every operation the schema lists (native, /v1, tokenize, ops) gets generated requests, valid and
invalid; the checks fail on any 5xx and on any response whose status, content type or body the
schema does not document. Bounded in examples and time; a fixed seed makes a failure repeatable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 40
SEED = 20261201


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_any_operation(start_server, gpt2_vocab_model, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists() and not (cli := shutil.which("schemathesis")):
        pytest.skip("schemathesis is not installed (it is in the test extra)")
    server = start_server(gpt2_vocab_model, MINIVAULT_WORKERS=2, MINIVAULT_MAX_QUEUE=64)
    run = subprocess.run(
        [str(cli), "run", server.url + "/schema/openapi.json", "--checks", CHECKS,
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--request-timeout", "60",
         "--phases", "examples,coverage,fuzzing", "--no-color"],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    summary = out[out.rfind("SUMMARY"):] if "SUMMARY" in out else out[-3000:]
    print(summary)
    tested = re.search(r"Tested: (\d+)", out)
    cases = re.search(r"(\d+) generated", out)
    assert run.returncode == 0, out[-8000:]
    assert tested and int(tested.group(1)) >= 5 and cases and int(cases.group(1)) > 0, summary
    assert server.stop() == 0
