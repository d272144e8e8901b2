"""The models dir as the server reads it: ids, the default model, models.toml, the no-model message."""

from __future__ import annotations

import pytest

from service.config import Settings, SettingsError
from service.runtime import catalog


def test_every_model_file_by_id_and_the_default(tmp_path):
    (tmp_path / "gpt2-q4_0").mkdir()
    (tmp_path / "gpt2-q4_0" / "model.bin").write_bytes(b"x")
    (tmp_path / ".partial.bin").write_bytes(b"x")  # an unfinished download is never served
    (tmp_path / ".partial" / "next").mkdir(parents=True)
    (tmp_path / ".partial" / "next" / "model.bin").write_bytes(b"x")
    settings = Settings(models_dir=str(tmp_path))
    found = catalog.scan(settings)
    assert found == {"gpt2-q4_0": tmp_path / "gpt2-q4_0" / "model.bin"}
    assert catalog.default_model(settings, found) == "gpt2-q4_0"  # the only one
    (tmp_path / "loose.bin").write_bytes(b"x")
    found = catalog.scan(settings)
    assert set(found) == {"gpt2-q4_0", "loose"}
    assert catalog.default_model(settings, found) is None  # several: requests must name one
    assert catalog.default_model(Settings(models_dir=str(tmp_path), model="loose"), found) == "loose"


def test_a_model_file_outside_the_dir_is_served_beside_it(tmp_path):
    (tmp_path / "dir" / "a").mkdir(parents=True)
    (tmp_path / "dir" / "a" / "model.bin").write_bytes(b"x")
    (tmp_path / "elsewhere.bin").write_bytes(b"x")
    settings = Settings(models_dir=str(tmp_path / "dir"), model=str(tmp_path / "elsewhere.bin"))
    found = catalog.scan(settings)
    assert found == {"a": tmp_path / "dir" / "a" / "model.bin", "elsewhere": tmp_path / "elsewhere.bin"}
    assert catalog.default_model(settings, found) == "elsewhere"


def test_a_missing_model_says_how_to_get_one(tmp_path):
    with pytest.raises(SettingsError, match="no such file.*minivault download.*minivault import"):
        catalog.scan(Settings(models_dir=str(tmp_path), model=str(tmp_path / "missing.bin")))
    assert "demo-model" in catalog.how_to_get_one()


def test_models_toml_options_are_checked(tmp_path):
    settings = Settings(models_dir=str(tmp_path))
    assert catalog.read_options(settings) == {}
    (tmp_path / "models.toml").write_text("[a]\nworkers = 2\n")
    assert catalog.read_options(settings) == {"a": catalog.ModelOptions(workers=2)}
    (tmp_path / "models.toml").write_text("[a]\nworkerz = 2\n")
    with pytest.raises(SettingsError, match=r"models.toml: \[a\].*workerz"):
        catalog.read_options(settings)
    (tmp_path / "models.toml").write_text("[a]\nworkers = 0\n")
    with pytest.raises(SettingsError, match="workers = 0: must be between 1 and 64"):
        catalog.read_options(settings)
    (tmp_path / "models.toml").write_text("[a\n")
    with pytest.raises(SettingsError, match="not a valid TOML file"):
        catalog.read_options(settings)
