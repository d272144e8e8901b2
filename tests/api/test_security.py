"""Browser-safe defaults and API keys on a live server, with the requests a browser really sends."""

from __future__ import annotations

import hashlib
import socket
import time

import httpx
import openai
import pytest

from service.api.app import create_app
from service.config import Settings, SettingsError
from tests.support.server import LiveServer, new_records, read_log

EVIL = "http://evil.example"
# what Chrome sends for fetch(url, {method: "POST", body: "..."}) from a page on another origin:
# text/plain is a CORS-safelisted type, so there is no preflight and the request goes out at once
SIMPLE_REQUEST = {"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8", "Sec-Fetch-Mode": "cors",
                  "Sec-Fetch-Site": "cross-site", "Accept": "*/*"}
KEY, OTHER_KEY = "mv-test-key-0123456789", "mv-second-key-abcdefgh"
BODY = '{"prompt": "Hello", "max_new_tokens": 3}'


def preflight(origin: str, headers: str = "content-type") -> dict[str, str]:
    """The OPTIONS request Chrome sends before a cross-origin JSON POST."""
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers,
            "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "cross-site", "Accept": "*/*"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model):
    """Live servers: defaults (no keys, no CORS); keys + CORS for one origin + an extra host."""
    root = tmp_path_factory.mktemp("security")
    keys_file = root / "keys.txt"
    keys_file.write_text(f"# the team's keys\n{OTHER_KEY}\n\n   # old key, revoked\n")
    started = {
        "open": LiveServer(tiny_model, root / "open" / "log.jsonl"),
        "keys": LiveServer(tiny_model, root / "keys" / "log.jsonl", MINIVAULT_API_KEYS=KEY,
                           MINIVAULT_API_KEYS_FILE=str(keys_file), MINIVAULT_CORS_ORIGINS="http://app.example",
                           MINIVAULT_ALLOWED_HOSTS="minivault.internal"),
    }
    yield started
    for server in started.values():
        server.stop()


def test_cross_origin_text_plain_post_is_refused_with_415_and_runs_nothing(servers):
    server = servers["open"]
    before = len(read_log(server.log_file))
    r = httpx.post(server.url + "/generate", content=BODY, headers=SIMPLE_REQUEST)
    assert r.status_code == 415, r.text
    assert r.json() == {"error": {"type": "unsupported_media_type", "field": "Content-Type",
                                  "message": "Content-Type must be application/json, got 'text/plain;charset=UTF-8'"}}
    assert "access-control-allow-origin" not in r.headers
    # the same body as a form post (the other simple request a page can make) and with no type at all
    for headers in ({"Content-Type": "application/x-www-form-urlencoded"}, {}):
        r = httpx.post(server.url + "/generate/stream", content=BODY, headers={"Origin": EVIL, **headers})
        assert r.status_code == 415 and r.json()["error"]["field"] == "Content-Type", r.text
    assert new_records(server.log_file, before, timeout=0.5) == []  # nothing was generated


@pytest.mark.parametrize("content_type, status", [
    ("application/json", 200), ("application/json; charset=utf-8", 200), ("Application/JSON;charset=UTF-8", 200),
    ("application/json; charset=latin-1", 415), ("application/jsonx", 415), ("text/json", 415),
])
def test_only_json_bodies_are_accepted(servers, content_type, status):
    r = httpx.post(servers["open"].url + "/tokenize", content='{"text": "hi"}',
                   headers={"Content-Type": content_type})
    assert r.status_code == status, r.text


def test_foreign_host_header_is_refused_but_loopback_names_are_served(servers):
    server = servers["open"]
    port = server.port
    # a DNS-rebinding page: the browser resolves evil.example to 127.0.0.1 and sends its own Host
    r = httpx.post(server.url + "/generate", content=BODY,
                   headers={"Host": f"evil.example:{port}", "Content-Type": "application/json", "Origin": EVIL})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"type": "invalid_host", "field": "Host", "message": f"Host 'evil.example:{port}' "
                                 "is not one this server answers to: add it to MINIVAULT_ALLOWED_HOSTS if it should be"}
    assert "access-control-allow-origin" not in r.headers
    # loopback names on any port (a published container's port is not known inside it)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "LOCALHOST:8080", "[::1]:9000"):
        r = httpx.post(server.url + "/tokenize", json={"text": "hi"}, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    # /health is exempt: probes (Kubernetes, Docker) call it by the pod's or container's IP
    assert httpx.get(server.url + "/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_allowed_hosts_setting_extends_the_list(servers):
    server = servers["keys"]
    auth = {"Authorization": f"Bearer {KEY}"}
    for host, status in ((f"minivault.internal:{server.port}", 200), ("minivault.internal", 200),
                         ("minivault.internal:9999", 200), (f"other.internal:{server.port}", 400),
                         ("internal", 400), ("evil.minivault.internal", 400)):
        r = httpx.post(server.url + "/tokenize", json={"text": "hi"}, headers={"Host": host, **auth})
        assert r.status_code == status, (host, r.text)


def test_cors_is_off_by_default(servers):
    url = servers["open"].url
    r = httpx.options(url + "/generate", headers=preflight(EVIL))
    assert not [h for h in r.headers if h.startswith("access-control-")], r.headers
    r = httpx.post(url + "/tokenize", json={"text": "hi"}, headers={"Origin": "http://app.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_preflight_from_a_listed_origin_is_answered(servers):
    url = servers["keys"].url
    r = httpx.options(url + "/generate/stream", headers=preflight("http://app.example", "authorization,content-type"))
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    # the real request that follows gets the origin back, and may read the request id
    r = httpx.post(url + "/tokenize", json={"text": "hi"},
                   headers={"Origin": "http://app.example", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


def test_cors_preflight_from_an_unlisted_origin_gets_no_allow_origin(servers):
    url = servers["keys"].url
    r = httpx.options(url + "/generate", headers=preflight(EVIL))
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.post(url + "/tokenize", json={"text": "hi"}, headers={"Origin": EVIL, "Authorization": f"Bearer {KEY}"})
    assert "access-control-allow-origin" not in r.headers  # the browser will not hand the answer to the page


def test_missing_or_wrong_key_is_401_with_www_authenticate(servers):
    url = servers["keys"].url
    for headers, message in (({}, "this server needs an API key"), ({"Authorization": "Bearer wrong-key-123"},
                                                                       "the API key is not valid"),
                             ({"X-API-Key": KEY[:-1]}, "the API key is not valid"),
                             ({"Authorization": f"Basic {KEY}"}, "this server needs an API key")):
        r = httpx.post(url + "/generate", json={"prompt": "hi"}, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == 'Bearer realm="MiniVault"'
        error = r.json()["error"]
        assert error["type"] == "unauthorized" and error["message"].startswith(message)
        assert KEY not in r.text and "wrong-key-123" not in r.text
    # unknown paths answer 401 too without a key (no probing for routes), 404 with one
    assert httpx.get(url + "/nothing-here").status_code == 401
    assert httpx.get(url + "/nothing-here", headers={"X-API-Key": KEY}).status_code == 404


def test_keys_from_the_setting_and_the_file_work_in_both_headers_and_the_log_has_their_id(servers):
    server = servers["keys"]
    before = len(read_log(server.log_file))
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": OTHER_KEY}):
        r = httpx.post(server.url + "/generate", json={"prompt": "hi", "max_new_tokens": 2}, headers=headers)
        assert r.status_code == 200, r.text
    records = new_records(server.log_file, before, count=2)
    ids = [hashlib.sha256(k.encode()).hexdigest()[:12] for k in (KEY, OTHER_KEY)]
    assert [rec["key_id"] for rec in records] == ids
    assert KEY not in server.log_file.read_text() and OTHER_KEY not in server.log_file.read_text()


def test_health_and_playground_are_public_metrics_need_the_key_by_default(servers):
    url = servers["keys"].url
    assert httpx.get(url + "/health").status_code == 200
    page = httpx.get(url + "/")
    assert page.status_code == 200 and 'data-keys="on"' in page.text  # the page asks for the key
    assert httpx.get(url + "/schema/openapi.json").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 401
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "minivault_requests_total" in r.text


def test_metrics_public_setting_opens_only_metrics(tmp_path, tiny_model):
    server = LiveServer(tiny_model, tmp_path / "log.jsonl", MINIVAULT_API_KEYS=KEY, MINIVAULT_METRICS_PUBLIC="true")
    try:
        assert httpx.get(server.url + "/metrics").status_code == 200
        assert httpx.post(server.url + "/tokenize", json={"text": "hi"}).status_code == 401
    finally:
        server.stop()
    assert KEY not in server.output


def test_v1_paths_get_openai_shaped_401(servers):
    # issue 9 adds the /v1 routes; any /v1 path already answers 401 in OpenAI's shape without a key
    r = httpx.post(servers["keys"].url + "/v1/chat/completions", json={"model": "x", "messages": []},
                   headers={"Authorization": "Bearer nope-nope-nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json() == {"error": {"message": "the API key is not valid", "type": "authentication_error",
                                  "param": None, "code": "invalid_api_key"}}


def test_openai_sdk_raises_authentication_error_on_a_wrong_key(servers):
    url = servers["keys"].url + "/v1"
    with openai.OpenAI(base_url=url, api_key="sk-wrong-key", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as client:  # the right key works
        assert [m.id for m in client.models.list().data] and client.completions.create(
            model=None, prompt="a", max_tokens=2).usage.completion_tokens >= 0


def test_raw_request_with_a_near_miss_key_is_refused_without_echoing_it(servers):
    server = servers["keys"]
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # a raw request, as curl would send it
        s.sendall(f"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-API-Key: {KEY}x\r\n"
                  f"Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
                  '{"text": "a"}'.encode())
        with s.makefile("rb") as f:
            answer = f.read().decode()
    assert answer.startswith("HTTP/1.1 401") and KEY not in answer


def test_unreadable_keys_file_stops_the_start(tmp_path, tiny_model):
    settings = Settings(model=str(tiny_model), api_keys_file=str(tmp_path / "missing.txt"))
    with pytest.raises(SettingsError, match="MINIVAULT_API_KEYS_FILE=.*missing.txt: cannot read it"):
        create_app(settings)
    comments_only = tmp_path / "keys.txt"
    comments_only.write_text("# nothing yet\n")
    with pytest.raises(SettingsError, match="holds no key"):
        create_app(Settings(model=str(tiny_model), api_keys_file=str(comments_only)))
    with pytest.raises(SettingsError, match="8\\+ characters"):
        create_app(Settings(model=str(tiny_model), api_keys="short"))



@pytest.mark.parametrize("host, name", [("localhost:8000", "localhost"), ("[::1]:8000", "[::1]"), ("[::1]", "[::1]"),
                                        ("example.com", "example.com"), ("a.example.com:443", "a.example.com")])
def test_hostname_drops_only_the_port(host, name):
    from service.api.security import hostname

    assert hostname(host) == name


@pytest.mark.parametrize("allowed, host, status", [
    ("*.example.com", "api.example.com:8443", 200), ("*.example.com", "example.com.evil.net", 400),
    ("*", "anything.at.all:1", 200), ("", "testserver.local", 400), ("", "127.0.0.1.evil.net", 400),
])
def test_allowed_hosts_wildcards(tiny_model, tmp_path, allowed, host, status):
    from litestar.testing import TestClient

    settings = Settings(model=str(tiny_model), log_file=str(tmp_path / "log.jsonl"), threads=1, allowed_hosts=allowed)
    with TestClient(create_app(settings), base_url=f"http://{host}") as c:
        for _ in range(300):  # /health is exempt from the check
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        assert c.post("/detokenize", json={"tokens": []}, headers={"Host": host}).status_code == status
