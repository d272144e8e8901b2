"""Settings from MINIVAULT_* variables, and finding the model."""

from __future__ import annotations

import pytest

from service.config import Settings, SettingsError


def test_defaults_and_env_are_read():
    s = Settings.from_env(environ={"MINIVAULT_PORT": "9001", "MINIVAULT_WORKERS": "2", "MINIVAULT_LOG_PROMPTS": "false",
                                   "MINIVAULT_TIMEOUT_S": "2.5", "OTHER": "x"})
    assert (s.port, s.workers, s.log_prompts, s.timeout_s) == (9001, 2, False, 2.5)
    assert s.models_dir == "./models" and s.log_file == "./logs/log.jsonl" and s.max_queue == 16


def test_threads_default_to_cores_but_one_shared_among_workers(monkeypatch):
    monkeypatch.setattr("service.config.available_cores", lambda: 8)
    assert Settings().threads_per_worker == 7
    assert Settings(workers=2).threads_per_worker == 3
    assert Settings(workers=16).threads_per_worker == 1
    assert Settings(workers=2, threads=3).threads_per_worker == 3
    monkeypatch.setattr("service.config.available_cores", lambda: 2)
    assert Settings().threads_per_worker == 1
    monkeypatch.setattr("service.config.available_cores", lambda: 1)
    assert Settings().threads_per_worker == 1


@pytest.mark.parametrize(
    "env, words",
    [
        ({"MINIVAULT_PORT": "abc"}, "MINIVAULT_PORT='abc' is invalid"),
        ({"MINIVAULT_PORT": "70000"}, "MINIVAULT_PORT=70000 is invalid"),
        ({"MINIVAULT_WORKERS": "0"}, "MINIVAULT_WORKERS=0 is invalid"),
        ({"MINIVAULT_MAX_QUEUE": "-1"}, "MINIVAULT_MAX_QUEUE=-1"),
        ({"MINIVAULT_TIMEOUT_S": "0"}, "MINIVAULT_TIMEOUT_S=0.0"),
        ({"MINIVAULT_LOG_PROMPTS": "maybe"}, "MINIVAULT_LOG_PROMPTS='maybe' is invalid"),
    ],
)
def test_invalid_settings_name_the_variable(env, words):
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(environ=env)
    assert words in str(exc.value)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_unknown_variables_are_named_with_the_closest_setting():
    from service.config import unknown_variables

    env = {"MINIVAULT_WORKER": "2", "MINIVAULT_TIMEOUT": "5", "MINIVAULT_URL": "http://x", "MINIVAULT_PORT": "1",
           "MINIVAULT_ZZZZZZ": "1", "PATH": "/bin"}
    assert unknown_variables(env) == [
        "MINIVAULT_TIMEOUT is not a MiniVault setting and is ignored; did you mean MINIVAULT_TIMEOUT_S?",
        "MINIVAULT_WORKER is not a MiniVault setting and is ignored; did you mean MINIVAULT_WORKERS?",
        "MINIVAULT_ZZZZZZ is not a MiniVault setting and is ignored; see the README's settings table",
    ]
    assert unknown_variables({"MINIVAULT_WORKERS": "2", "MINIVAULT_DEBUG": "1"}) == []


def test_the_server_warns_of_a_misspelled_variable_at_start(start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_WORKER="2")
    assert server.stop() == 0
    assert ("minivault: warning: MINIVAULT_WORKER is not a MiniVault setting and is ignored; "
            "did you mean MINIVAULT_WORKERS?") in server.output
