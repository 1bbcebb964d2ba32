"""run_uq on a model directory: cache hits, fingerprints, reproducible JSON, the typer command."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner
from uq_fixtures import colour_items, write_items

from uqmerge.cli.uq import uq_command
from uqmerge.core.errors import ConfigError
from uqmerge.uq.api import run_uq
from uqmerge.uq.cache import CACHE_ENV, UQCache, default_cache_dir, fingerprint_model_dir
from uqmerge.uq.config import UQConfig


def test_rerun_is_a_logged_cache_hit_with_identical_json(
    uq_llava_dir: Path,
    uq_jsonl: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = UQConfig(mode="vl", save_probs=True)
    first = run_uq(uq_llava_dir, [str(uq_jsonl)], config, device="cpu", cache_dir=tmp_path)
    assert not first.cache_hit
    with caplog.at_level(logging.INFO, logger="uqmerge.uq"):
        second = run_uq(uq_llava_dir, [str(uq_jsonl)], config, device="cpu", cache_dir=tmp_path)
    assert second.cache_hit and "cache hit" in caplog.text
    assert second.to_json() == first.to_json()
    uncached = run_uq(uq_llava_dir, [str(uq_jsonl)], config, device="cpu", cache_dir=tmp_path, use_cache=False)
    assert not uncached.cache_hit and uncached.to_json() == first.to_json()
    other_seed = run_uq(uq_llava_dir, [str(uq_jsonl)], config.model_copy(update={"seed": 1}), cache_dir=tmp_path)
    assert not other_seed.cache_hit
    slim = run_uq(uq_llava_dir, [str(uq_jsonl)], UQConfig(mode="vl"), device="cpu", cache_dir=tmp_path)
    assert slim.cache_hit and slim.datasets[0].items is None and slim.score == first.score
    assert len(list((tmp_path / "results").glob("*.json"))) == 2


def test_cache_key_follows_the_scored_items_not_the_batch_size_or_file_order(
    uq_llava_dir: Path, tmp_path: Path
) -> None:
    rows = colour_items(tmp_path / "a", 4)
    path = write_items(tmp_path / "a", rows)
    config = UQConfig(mode="vl", perturbations=2, batch_size=8)
    cache = tmp_path / "cache"
    first = run_uq(uq_llava_dir, [str(path)], config, device="cpu", cache_dir=cache)
    other_batch = run_uq(
        uq_llava_dir, [str(path)], config.model_copy(update={"batch_size": 1}), device="cpu", cache_dir=cache
    )
    assert other_batch.cache_hit and other_batch.score == first.score
    assert other_batch.config.batch_size == 1, "the record carries the caller's options"
    colour_items(tmp_path / "b", 4)
    reversed_file = write_items(tmp_path / "b", rows[::-1])
    reordered = run_uq(uq_llava_dir, [str(reversed_file)], config, device="cpu", cache_dir=cache)
    assert reordered.cache_hit and reordered.score == first.score
    assert reordered.datasets[0].spec == f"jsonl:{reversed_file}", "the record names the file read this time"
    assert reordered.datasets[0].fingerprint == first.datasets[0].fingerprint
    renamed = run_uq(uq_llava_dir, [str(write_items(tmp_path / "a", rows, "renamed.jsonl"))], config, cache_dir=cache)
    assert not renamed.cache_hit, "the dataset name keys every draw, so it is part of the key"
    colour_items(tmp_path / "c", 4)
    edited = [{**rows[0], "question": "Which colour is it?"}, *rows[1:]]
    changed = run_uq(uq_llava_dir, [str(write_items(tmp_path / "c", edited))], config, cache_dir=cache)
    assert not changed.cache_hit and changed.datasets[0].fingerprint != first.datasets[0].fingerprint
    sampled = run_uq(uq_llava_dir, [str(path)], config.model_copy(update={"sample_ratio": 0.5}), cache_dir=cache)
    assert not sampled.cache_hit and sampled.datasets[0].n_sampled == 2
    assert sampled.datasets[0].fingerprint != first.datasets[0].fingerprint, "the record names the items scored"


def test_model_fingerprint_follows_content(uq_llava_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(uq_llava_dir, copy)
    assert fingerprint_model_dir(copy, cache_dir=tmp_path / "c") == fingerprint_model_dir(uq_llava_dir)
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert fingerprint_model_dir(copy, cache_dir=tmp_path / "c") != fingerprint_model_dir(uq_llava_dir)


def test_cache_dir_defaults_to_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert UQCache().root == tmp_path / "env-cache"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "uqmerge" / "uq"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("uq")(uq_command)

    @app.callback()
    def _group() -> None:
        """Test group so that 'uq' is a subcommand."""

    return app


def test_uq_command_writes_json(uq_llava_dir: Path, uq_jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "uq.json"
    args = ["uq", str(uq_llava_dir), "--data", str(uq_jsonl), "--data", f"jsonl:{uq_jsonl}", "--mode", "input"]
    args += ["-J", "3", "--seed", "2", "--batch-size", "5", "--device", "cpu", "--out", str(out)]
    args += ["--save-probs", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["config"]["mode"] == "input" and record["config"]["perturbations"] == 3
    assert [d["name"] for d in record["datasets"]] == ["items#1", "items#2"]
    assert len(record["datasets"][0]["items"][0]["probs"]) == 3
    assert record["score"] == pytest.approx(sum(d["uncertainty"] for d in record["datasets"]) / 2)


def test_uq_command_rejects_bad_options(uq_llava_dir: Path, uq_jsonl: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["uq", str(uq_llava_dir), "--data", str(uq_jsonl), "--sample-ratio", "0", "--no-cache"]
    )
    assert isinstance(result.exception, ConfigError) and "sample_ratio" in str(result.exception)
    result = CliRunner().invoke(_app(), ["uq", str(uq_llava_dir), "--data", str(uq_jsonl), "--mode", "bogus"])
    assert result.exit_code == 2
