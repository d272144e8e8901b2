"""The installed `minivault` console script points at a callable (what the image runs)."""

from __future__ import annotations

from importlib.metadata import entry_points

from service.cli.main import main


def test_console_script_loads_the_cli_main_function():
    (script,) = entry_points(group="console_scripts", name="minivault")
    assert script.load() is main
