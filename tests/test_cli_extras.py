"""Optional extras: a command whose extra is missing names it in one line; importing the CLI loads no torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from uqmerge.cli import app, common
from uqmerge.cli.common import EXTRA_MODULES, missing_extras, require_extra

OPTIONAL_MODULES = {m for mods in EXTRA_MODULES.values() for m in mods}

# The distribution that provides each module of EXTRA_MODULES (where the names differ).
DISTRIBUTION = {"PIL": "pillow", "lmms_eval": "lmms-eval"}


@pytest.fixture
def no_optional_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every module an extra provides look uninstalled."""
    real = common.find_spec

    def find_spec(name: str, *args: object):
        return None if name.split(".")[0] in OPTIONAL_MODULES else real(name, *args)

    monkeypatch.setattr(common, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["uq", "model", "--data", "items.jsonl"], "uqmerge uq needs the 'uq' extra: pip install 'uqmerge[uq]'"),
        (["eval", "model", "--data", "items.jsonl"], "uqmerge eval needs the 'uq' extra: pip install 'uqmerge[uq]'"),
        (["zoo", "build", "zoo"], "uqmerge zoo build needs the 'zoo' extra: pip install 'uqmerge[zoo]'"),
        (
            ["run", "run.yaml", "out"],
            "uqmerge run needs the 'uq' and 'report' extras: pip install 'uqmerge[uq,report]'",
        ),
        (
            ["search", "search.yaml", "out"],
            "uqmerge search needs the 'uq' and 'report' extras: pip install 'uqmerge[uq,report]'",
        ),
        (
            ["demo"],
            "uqmerge demo needs the 'zoo', 'uq' and 'report' extras: pip install 'uqmerge[zoo,uq,report]'",
        ),
    ],
)
def test_a_missing_extra_is_named_in_one_line_with_exit_status_2(
    no_optional_modules: None, argv: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message}"


def test_merge_with_lora_output_needs_the_lora_extra(no_optional_modules: None, tmp_path: Path) -> None:
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("merge_method: linear\nbase_model: base\nmodels:\n  - model: a\nlora_output: {}\n")
    result = CliRunner().invoke(app, ["merge", str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: uqmerge merge with lora_output needs the 'lora' extra: pip install 'uqmerge[lora]'"
    )
    assert not (tmp_path / "out").exists()


def test_one_missing_module_makes_its_extra_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = common.find_spec
    monkeypatch.setattr(common, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    assert missing_extras("uq", "zoo", "report", "lora") == ["uq"]
    with pytest.raises(Exception) as raised:
        require_extra("uq", "uq")
    assert getattr(raised.value, "exit_code", None) == 2


def test_the_dev_environment_has_every_extra() -> None:
    assert missing_extras(*EXTRA_MODULES) == []
    require_extra("demo", *EXTRA_MODULES)


def test_extra_modules_match_the_extras_of_pyproject() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]

    def declared_of(extra: str) -> set[str]:
        # `uqmerge[uq]` in an extra stands for the uq extra's requirements.
        names: set[str] = set()
        for req in extras[extra]:
            if req.startswith("uqmerge["):
                for inner in req.removeprefix("uqmerge[").rstrip("]").split(","):
                    names |= declared_of(inner)
            else:
                names.add(re.split(r"[<>=!~\[;\s]", req, maxsplit=1)[0].lower())
        return names

    for extra, modules in EXTRA_MODULES.items():
        declared = declared_of(extra)
        assert {DISTRIBUTION.get(m, m).lower() for m in modules} == declared, extra
    base = " ".join(pyproject["project"]["dependencies"])
    assert not any(DISTRIBUTION.get(m, m) in base for m in OPTIONAL_MODULES)


HEAVY = ("torch", "transformers", "peft", "matplotlib", "datasets", "torchvision", "PIL", "uqmerge.zoo")

PROBE = """
import sys
from uqmerge.cli import app
argv = sys.argv[1:]
if argv:
    try:
        app(argv)
    except SystemExit:
        pass
heavy = {heavy!r}
print("imported:", ",".join(m for m in heavy if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["merge", "--help"], ["uq", "--help"], ["search", "--help"], ["zoo", "build", "--help"]]
)
def test_the_cli_and_its_help_import_no_torch(argv: list[str]) -> None:
    probe = PROBE.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    assert done.stderr.strip().splitlines()[-1] == "imported:", done.stderr
