"""The request log: whole lines under concurrency; a broken log never fails a request."""

from __future__ import annotations

import json
import threading
import time

from litestar.testing import TestClient

from service.api.app import create_app
from service.runtime.logbook import LogBook


def test_concurrent_writers_give_whole_lines(tmp_path):
    book = LogBook(tmp_path / "logs" / "log.jsonl")
    big = "x" * 100_000  # larger than a pipe buffer: a torn write would show

    def writer(n: int) -> None:
        for i in range(50):
            book.write({"writer": n, "i": i, "text": big if i % 10 == 0 else "日本語"})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    book.close()
    records = [json.loads(line) for line in (tmp_path / "logs" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 400
    assert {(r["writer"], r["i"]) for r in records} == {(n, i) for n in range(8) for i in range(50)}


def test_a_record_is_one_line_for_every_line_splitter(tmp_path):
    # a random model emits any character, NEL and the Unicode line separators included
    text = "a\x85b\u2028c\u2029d\x1ce\r\nf\u00e9\U0001f600"
    book = LogBook(tmp_path / "log.jsonl")
    book.write({"response": text})
    book.write({"response": "next"})
    book.close()
    raw = (tmp_path / "log.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and raw.isascii() is False  # other non-ASCII text stays as it is
    lines = raw.decode().splitlines()
    assert [json.loads(line)["response"] for line in lines] == [text, "next"]


def test_unwritable_log_is_reported_on_stderr_and_the_request_still_succeeds(tiny_model, settings_for, tmp_path,
                                                                             capfd):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's folder should be")
    settings = settings_for(tiny_model, log_file=str(blocked / "log.jsonl"))
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        r = c.post("/generate", json={"prompt": "hi", "max_new_tokens": 3})
        assert r.status_code == 200
    err = capfd.readouterr().err
    assert "could not write the request log" in err and str(blocked) in err
