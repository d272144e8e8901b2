"""The log's settings: MINIVAULT_LOG_DB, MINIVAULT_LOG_FSYNC, MINIVAULT_LOG_BUFFER."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings, SettingsError


def test_the_database_defaults_to_log_db_beside_the_log_file_and_off_disables_it():
    assert Settings.from_env(environ={"MINIVAULT_LOG_FILE": "/x/y/log.jsonl"}).log_db_path == Path("/x/y/log.db")
    assert Settings.from_env(environ={"MINIVAULT_LOG_DB": "/d/requests.db"}).log_db_path == Path("/d/requests.db")
    assert Settings.from_env(environ={"MINIVAULT_LOG_DB": "off"}).log_db_path is None


@pytest.mark.parametrize("value", ["off", "record", "1", "250", "60000"])
def test_fsync_modes_accepted(value):
    assert Settings.from_env(environ={"MINIVAULT_LOG_FSYNC": value}).log_fsync == value


@pytest.mark.parametrize("value", ["always", "0", "-5", "60001", "1.5"])
def test_a_bad_fsync_mode_names_the_variable_and_the_choices(value):
    with pytest.raises(SettingsError, match=r"MINIVAULT_LOG_FSYNC=.* must be off, record, or a number of ms"):
        Settings.from_env(environ={"MINIVAULT_LOG_FSYNC": value})


def test_the_buffer_must_hold_at_least_one_record():
    with pytest.raises(SettingsError, match="MINIVAULT_LOG_BUFFER=0 is invalid"):
        Settings.from_env(environ={"MINIVAULT_LOG_BUFFER": "0"})
