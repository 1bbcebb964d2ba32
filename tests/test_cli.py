"""The command line's surface: commands, their help, size options, and the zoo presets `--help` names."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from uqmerge.cli import app
from uqmerge.cli.common import parse_size
from uqmerge.cli.zoo import PRESET_NAMES

COMMANDS = ["merge", "methods", "demo", "run", "search", "uq", "eval", "zoo"]


def test_top_level_help_lists_every_command_in_order() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = [line.strip("│ ").split(" ")[0] for line in result.output.splitlines()]
    assert [name for name in lines if name in COMMANDS] == COMMANDS


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["merge"], ["--max-shard-size", "--max-block-bytes", "--device", "--force", "--allow-pickle", "--quiet"]),
        (["methods"], []),
        (["demo"], ["--workdir", "--preset", "--seed", "--quiet", "--verbose"]),
        (["run"], ["--resume", "--quiet", "--verbose"]),
        (["search"], ["--resume", "--quiet", "--verbose"]),
        (["uq"], ["--data", "--mode", "--perturbations", "--sample-ratio", "--save-probs", "--no-cache", "--out"]),
        (["eval"], ["--data", "--lmms-eval", "--lmms-eval-include", "--limit", "--device", "--batch-size", "--out"]),
        (["zoo", "export-lmms-eval"], ["--force", "--quiet"]),
        (["zoo", "build"], ["--preset", "--seed", "--force", "--quiet", "--workers"]),
    ],
)
def test_every_command_has_help_and_its_options(argv: list[str], options: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


def test_zoo_help_names_the_presets_of_the_zoo() -> None:
    from uqmerge.zoo.presets import PRESETS

    assert tuple(PRESETS) == PRESET_NAMES


def test_methods_lists_the_registry() -> None:
    from uqmerge.methods import method_names

    result = CliRunner().invoke(app, ["methods"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in method_names())


@pytest.mark.parametrize(
    ("text", "size"), [("5000000000", 5_000_000_000), ("5GB", 5_000_000_000), ("512MiB", 512 * 2**20), ("1.5kb", 1500)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 parsecs", "0", "-1MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_size(text)


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "uqmerge", "--help"], capture_output=True, text=True, check=True)
    assert "merge" in done.stdout and "zoo" in done.stdout
