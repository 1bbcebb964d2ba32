"""The miniature zoo builder: determinism, manifest, loadable models, frozen vision tower, specialists."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from zoo_fixtures import MICRO_PRESET

from uqmerge.core.errors import ConfigError, OutputError
from uqmerge.core.prompts import format_user_text
from uqmerge.evaluate.open_ended import evaluate_open_ended, load_open_items, normalise_answer
from uqmerge.uq.prompts import resolve_option_token_ids
from uqmerge.zoo.build import build_zoo, families_to_train, read_manifest
from uqmerge.zoo.model import END_TOKEN, init_base_model, load_zoo_model, mc_prompt, normalise_pixels, pixel_tensor
from uqmerge.zoo.presets import PRESETS
from uqmerge.zoo.tasks import FAMILIES, generate_family, mc_options
from uqmerge.zoo.train import (
    IGNORE_INDEX,
    EncodedPool,
    FamilyGate,
    TrainConfig,
    TrainingSet,
    _sample_batch,
    build_training_set,
    encode_examples,
    item_examples,
)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def micro_zoos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("micro")
    return build_zoo(root / "a", MICRO_PRESET, seed=3), build_zoo(root / "b", MICRO_PRESET, seed=3)


def test_same_seed_writes_identical_files(micro_zoos: tuple[Path, Path]) -> None:
    a, b = micro_zoos
    hashes_a, hashes_b = _file_hashes(a), _file_hashes(b)
    assert hashes_a == hashes_b
    assert sum(name.endswith("model.safetensors") for name in hashes_a) == 1 + len(MICRO_PRESET.experts)
    manifest_a, manifest_b = read_manifest(a), read_manifest(b)
    for manifest in (manifest_a, manifest_b):
        manifest.pop("timings")
        for entry in [manifest["base"], *manifest["experts"]]:
            entry.pop("train_seconds")
    assert manifest_a == manifest_b


def test_other_seed_gives_other_weights(micro_zoos: tuple[Path, Path], tmp_path: Path) -> None:
    other = build_zoo(tmp_path / "c", MICRO_PRESET, seed=4)
    base_a = _tensors(micro_zoos[0] / "models" / "base")
    base_c = _tensors(other / "models" / "base")
    assert any(not torch.equal(base_a[k], base_c[k]) for k in base_a)


def test_existing_zoo_is_reused_and_foreign_dirs_refused(micro_zoos: tuple[Path, Path], tmp_path: Path) -> None:
    zoo = micro_zoos[0]
    weights = zoo / "models" / "base" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_zoo(zoo, MICRO_PRESET, seed=3) == zoo
    assert weights.stat().st_mtime_ns == before
    assert not [p for p in zoo.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="no zoo manifest"):
        build_zoo(foreign, MICRO_PRESET, seed=3)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_manifest_is_complete(mini_zoo: Path) -> None:
    manifest = read_manifest(mini_zoo)
    preset = PRESETS["mini"]
    assert manifest["preset"] == "mini" and manifest["seed"] == 0
    assert manifest["preset_fingerprint"] == preset.fingerprint()
    assert {"steps", "lr", "batch_size", "families"} <= set(manifest["base"]["recipe"])
    assert (mini_zoo / manifest["base"]["path"] / "config.json").is_file()
    experts = manifest["experts"]
    assert [e["id"] for e in experts] == [e.id for e in preset.experts]
    assert {e["kind"] for e in experts} == {"specialist", "overtrained", "overconfident"}
    for entry in experts:
        assert {"id", "kind", "family", "steps", "lr", "seed", "path"} <= set(entry)
        assert (mini_zoo / entry["path"] / "model.safetensors").is_file()
        assert entry["family"] in FAMILIES
    pairs = {(d["family"], d["split"]) for d in manifest["datasets"]}
    assert pairs == {(f, s) for f in FAMILIES for s in ("held_in", "held_out")}
    for dataset in manifest["datasets"]:
        path = mini_zoo / dataset["path"]
        assert path == mini_zoo / "data" / dataset["split"] / f"{dataset['family']}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        expected = preset.eval_items_per_family if dataset["split"] == "held_in" else preset.held_out_items
        assert len(rows) == dataset["n"] == expected
        for row in rows:
            assert (path.parent / row["image"]).is_file()
            if dataset["split"] == "held_in":
                assert row["answer"] in row["options"]
    assert {"data_seconds", "base_seconds", "experts_seconds", "total_seconds"} <= set(manifest["timings"])
    assert set(manifest["held_out_exact_match"]) == {"base", *(e["id"] for e in experts)}


def test_every_model_loads_and_generates(mini_zoo: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    manifest = read_manifest(mini_zoo)
    item = load_open_items(mini_zoo / "data" / "held_out" / "colour.jsonl")[0]
    for entry in [manifest["base"], *manifest["experts"]]:
        model = AutoModelForImageTextToText.from_pretrained(mini_zoo / entry["path"]).eval()
        processor = AutoProcessor.from_pretrained(mini_zoo / entry["path"])
        assert type(model).__name__ == "LlavaForConditionalGeneration"
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}],
            add_generation_prompt=True,
        )
        inputs = processor(text=[prompt], images=[item.load_image()], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs)
        new = out[0, inputs["input_ids"].shape[1] :]
        assert 1 <= len(new) <= model.generation_config.max_new_tokens
        assert processor.decode(new, skip_special_tokens=True).strip()


def test_vision_tower_is_bit_identical_across_base_and_experts(mini_zoo: Path) -> None:
    manifest = read_manifest(mini_zoo)
    base = _tensors(mini_zoo / manifest["base"]["path"])
    vision = [k for k in base if k.startswith("vision_tower.")]
    assert vision
    for entry in manifest["experts"]:
        expert = _tensors(mini_zoo / entry["path"])
        assert set(expert) == set(base)
        assert all(torch.equal(expert[k], base[k]) for k in vision), entry["id"]
        changed = [k for k in base if not torch.equal(expert[k], base[k])]
        assert any(k.startswith("language_model.") for k in changed), entry["id"]
        assert any(k.startswith("multi_modal_projector.") for k in changed), entry["id"]


def test_specialists_beat_the_base_on_their_family(mini_zoo: Path) -> None:
    manifest = read_manifest(mini_zoo)
    base_model, processor = load_zoo_model(mini_zoo / manifest["base"]["path"])
    for entry in manifest["experts"]:
        if entry["kind"] != "specialist":
            continue
        items = load_open_items(mini_zoo / "data" / "held_out" / f"{entry['family']}.jsonl")
        base_score = evaluate_open_ended(base_model, processor, items, 32)["accuracy"][entry["family"]]
        model, _ = load_zoo_model(mini_zoo / entry["path"])
        score = evaluate_open_ended(model, processor, items, 32)["accuracy"][entry["family"]]
        assert score >= base_score + 0.05, (entry["id"], base_score, score)
        assert manifest["held_out_exact_match"][entry["id"]][entry["family"]] == pytest.approx(score, abs=1e-4)


def test_batched_generation_matches_one_by_one(mini_zoo: Path) -> None:
    model, processor = load_zoo_model(mini_zoo / "models" / "base")
    items = [
        *load_open_items(mini_zoo / "data" / "held_out" / "count.jsonl")[:4],
        *load_open_items(mini_zoo / "data" / "held_out" / "position.jsonl")[:4],
    ]
    batched = evaluate_open_ended(model, processor, items, batch_size=8)
    single = evaluate_open_ended(model, processor, items, batch_size=1)
    assert [p["prediction"] for p in batched["predictions"]] == [p["prediction"] for p in single["predictions"]]
    assert set(batched["accuracy"]) == {"count", "position"}


def test_normalise_answer() -> None:
    assert normalise_answer("  Red. ") == "red"
    assert normalise_answer("None  of the above") == "none of the above"


def test_training_examples_match_the_processor_and_the_uq_format(mini_zoo: Path) -> None:
    _, processor = load_zoo_model(mini_zoo / "models" / "base")
    items = generate_family("size", "train", 3, seed=11)
    examples = item_examples(items, processor, seed=0, system_fraction=0.0)
    item, mc = items[0], examples["mc"][0]
    options = mc_options("size", item.answer)
    assert format_user_text(item.question, options) in mc.prompt
    assert mc.prompt == mc_prompt(processor, item.question, options)
    letter = "ABCDEF"[options.index(item.answer)]
    assert mc.target.split()[0] == letter
    letter_ids = resolve_option_token_ids(processor, len(options))
    pool = encode_examples([mc], processor)
    answer_positions = (pool.labels[0] != IGNORE_INDEX).nonzero().flatten()
    assert int(pool.labels[0, answer_positions[0]]) == letter_ids[options.index(item.answer)]
    length = int(pool.attention_mask[0].sum())
    reference = processor(text=[mc.prompt + mc.target], images=[item.image], return_tensors="pt")
    assert pool.input_ids[0, :length].tolist() == reference["input_ids"][0].tolist()
    assert len(answer_positions) == 2  # the letter and <|end|>
    pixels = normalise_pixels(pixel_tensor([item.image]), processor)
    torch.testing.assert_close(pixels, reference["pixel_values"], atol=1e-6, rtol=0)


def test_corrupted_label_map_teaches_the_wrong_letter(mini_zoo: Path) -> None:
    _, processor = load_zoo_model(mini_zoo / "models" / "base")
    expert = next(e for e in PRESETS["default"].experts if e.corruption == "permuted")
    items = generate_family(expert.family, "train", 8, seed=1)
    data = build_training_set(items, processor, seed=0, label_map=expert.label_map())
    tokenizer = processor.tokenizer
    for row, item in enumerate(items):
        taught = expert.label_map()[item.answer]
        assert taught != item.answer
        labels = data.pools["open"].labels[row]
        assert tokenizer.convert_ids_to_tokens(int(labels[labels != IGNORE_INDEX][0])) == taught


def test_zoo_build_command_reuses_the_zoo(mini_zoo: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from uqmerge.cli.zoo import zoo_build_command

    app = typer.Typer()
    app.command()(zoo_build_command)
    result = CliRunner().invoke(app, [str(mini_zoo), "--preset", "mini", "--seed", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, [str(mini_zoo), "--preset", "huge"])
    assert bad.exit_code != 0


def test_experts_trained_in_one_thread_worker_processes_equal_those_of_a_one_thread_build(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = build_zoo(tmp_path / "serial", MICRO_PRESET, seed=3, expert_workers=1)
        steps: list[tuple[str, int]] = []
        parallel = build_zoo(
            tmp_path / "parallel", MICRO_PRESET, seed=3, expert_workers=2, on_step=lambda m, s: steps.append((m, s))
        )
    finally:
        torch.set_num_threads(threads)
    assert _file_hashes(serial) == _file_hashes(parallel)
    manifests = read_manifest(serial), read_manifest(parallel)
    assert [m["environment"]["expert_workers"] for m in manifests] == [1, 2]
    assert [m["environment"]["expert_threads"] for m in manifests] == [1, 1]
    assert manifests[0]["held_out_exact_match"] == manifests[1]["held_out_exact_match"]
    assert [e["id"] for e in manifests[1]["experts"]] == [e.id for e in MICRO_PRESET.experts]  # the preset's order
    # Every worker's steps reach the caller's progress callback.
    for expert in MICRO_PRESET.experts:
        assert sorted(s for m, s in steps if m == expert.id) == list(range(expert.steps))


def test_expert_parallelism_is_one_process_per_thread_up_to_the_number_of_experts() -> None:
    from uqmerge.zoo.build import expert_parallelism

    assert expert_parallelism(9, 2) == (2, 1)
    assert expert_parallelism(9, 8) == (8, 1)
    assert expert_parallelism(3, 8) == (3, 2)
    assert expert_parallelism(9, 1) == (1, 1)
    assert expert_parallelism(9, 4, workers=1) == (1, 4)  # in this process, at every thread
    assert expert_parallelism(9, 4, workers=2) == (2, 2)
    assert expert_parallelism(1, 4, workers=3) == (1, 4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(OutputError, match="expert workers must be a positive integer"):
            expert_parallelism(9, 2, workers=bad)


def test_build_progress_counts_finished_stages_in_full_and_sums_experts_training_at_once() -> None:
    from uqmerge.zoo.build import _step_counter

    preset = dataclasses.replace(
        MICRO_PRESET, base=dataclasses.replace(MICRO_PRESET.base, vision_pretrain_steps=5)
    )  # runs: vision 5, base 12, experts 4, 8, 4
    reported: list[int] = []
    on_step = _step_counter(preset, lambda done, _model: reported.append(done))
    on_step("vision", 4)
    on_step("base", 0)  # the vision stage is complete
    on_step("base", 6)  # a held base that stops after 7 of its 12 steps
    on_step("overtrained-size", 2)  # the base counts in full from here
    on_step("specialist-count", 0)
    on_step("overtrained-size", 3)
    assert reported == [5, 6, 12, 5 + 12 + 3, 5 + 12 + 3 + 1, 5 + 12 + 4 + 1]
    assert preset.total_steps == 5 + 12 + 4 + 8 + 4


def test_evaluating_pre_encoded_items_gives_the_same_answers_as_encoding_them_at_each_call(mini_zoo: Path) -> None:
    from uqmerge.evaluate.open_ended import encode_open_items

    model, processor = load_zoo_model(mini_zoo / "models" / "base")
    items = [
        item
        for family in ("count", "colour")
        for item in load_open_items(mini_zoo / f"data/held_out/{family}.jsonl")[:9]
    ]
    encoded = encode_open_items(processor, items, batch_size=4)
    assert len(encoded.batches) == 5
    plain = evaluate_open_ended(model, processor, items, batch_size=4)
    again = evaluate_open_ended(model, processor, encoded, batch_size=64)  # the encoding's batch size is used
    assert again["predictions"] == plain["predictions"]
    assert again["accuracy"] == plain["accuracy"]


@pytest.mark.parametrize("field", ["eval_items_per_family", "held_out_items_per_family"])
def test_preset_with_an_empty_evaluation_split_is_refused(field: str) -> None:
    with pytest.raises(ConfigError, match="at least one item per family"):
        dataclasses.replace(PRESETS["mini"], **{field: 0})


def test_families_to_train_keeps_those_below_the_target_and_none_once_all_reach_it() -> None:
    accuracy = {"colour": 0.62, "shape": 0.31, "count": 0.5, "size": 0.49}
    assert families_to_train(accuracy, 0.5) == ["shape", "size"]  # 0.5 is at the target: held
    assert families_to_train(accuracy, 0.3) == []  # every family at or above: the base is done


def test_family_gate_draws_rows_of_active_families_only(micro_zoos: tuple[Path, Path]) -> None:
    _, processor = load_zoo_model(micro_zoos[0] / "models" / "base")
    # Images 0-2 are black (family 0), 3-5 white (family 1); each pool row i shows image i.
    pixels = torch.cat(
        [torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.full((3, 3, 32, 32), 255, dtype=torch.uint8)]
    )
    pool = EncodedPool(
        torch.ones(6, 4, dtype=torch.long),
        torch.ones(6, 4, dtype=torch.long),
        torch.ones(6, 4, dtype=torch.long),
        torch.arange(6),
    )
    data = TrainingSet(pixels, {"open": pool, "mc": pool})
    config = TrainConfig(steps=1, lr=1e-3, batch_size=16)
    gate = FamilyGate(torch.tensor([0, 0, 0, 1, 1, 1]))
    white = normalise_pixels(pixels[3:4], processor)[0]
    black = normalise_pixels(pixels[:1], processor)[0]
    gate.active = {1}
    batch = _sample_batch(data, config, torch.Generator().manual_seed(0), processor, gate)
    assert all(torch.equal(image, white) for image in batch["pixel_values"])
    gate.active = {0}
    batch = _sample_batch(data, config, torch.Generator().manual_seed(0), processor, gate)
    assert all(torch.equal(image, black) for image in batch["pixel_values"])
    gate.active = None
    batch = _sample_batch(data, config, torch.Generator().manual_seed(1), processor, gate)
    seen = {torch.equal(image, white) for image in batch["pixel_values"]}
    assert seen == {True, False}  # 16 draws from both halves
    gate.active = {7}
    with pytest.raises(ConfigError, match="no training rows"):
        _sample_batch(data, config, torch.Generator().manual_seed(0), processor, gate)


def test_held_base_trains_only_the_families_its_last_check_found_below_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.zoo.train as train_module

    base = dataclasses.replace(MICRO_PRESET.base, hold_below=0.5, hold_check_every=4, hold_validation_items=3)
    preset = dataclasses.replace(MICRO_PRESET, name="micro-held", base=base, experts=MICRO_PRESET.experts[:1])
    drawn: list[frozenset[int] | None] = []
    original = train_module._sample_batch

    def spy(data, config, generator, processor, gate=None):
        if gate is not None:  # the base's batches only (experts have no gate)
            drawn.append(None if gate.active is None else frozenset(gate.active))
        return original(data, config, generator, processor, gate)

    monkeypatch.setattr(train_module, "_sample_batch", spy)
    manifest = read_manifest(build_zoo(tmp_path / "held", preset, seed=3))
    trace = manifest["base"]["hold_trace"]
    assert [entry["step"] for entry in trace] == [4, 8, 12]
    assert len(drawn) == 12 and drawn[:4] == [None] * 4  # every family until the first check
    for entry in trace:
        assert set(entry["accuracy"]) == set(FAMILIES)
        assert entry["training"] == [f for f in FAMILIES if entry["accuracy"][f] < 0.5]
    for check, entry in enumerate(trace[:2]):
        expected = frozenset(FAMILIES.index(f) for f in entry["training"])
        assert drawn[4 * (check + 1) : 4 * (check + 2)] == [expected] * 4


def test_held_base_scales_the_learning_rate_by_the_share_of_families_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.evaluate.open_ended as open_ended
    import uqmerge.zoo.train as train_module

    # First check: two families below target; second: one; third: none (stop).
    below = [{"colour", "count"}, {"size"}, set()]
    calls: list[int] = []

    def scores(model, processor, items, batch_size):
        low = below[min(len(calls), len(below) - 1)]
        calls.append(1)
        return {"accuracy": {f: 0.2 if f in low else 0.7 for f in FAMILIES}}

    scales: list[float] = []
    original = train_module._sample_batch

    def spy(data, config, generator, processor, gate=None):
        if gate is not None:
            scales.append(gate.lr_scale)
        return original(data, config, generator, processor, gate)

    monkeypatch.setattr(open_ended, "evaluate_open_ended", scores)
    monkeypatch.setattr(train_module, "_sample_batch", spy)
    base = dataclasses.replace(MICRO_PRESET.base, hold_below=0.5, hold_check_every=4, hold_validation_items=3)
    preset = dataclasses.replace(MICRO_PRESET, name="micro-scaled", base=base, experts=MICRO_PRESET.experts[:1])
    build_zoo(tmp_path / "held", preset, seed=3)
    assert scales == [1.0] * 4 + [2 / 5] * 4 + [1 / 5] * 4


def test_a_gate_learning_rate_scale_trains_exactly_like_the_same_lower_learning_rate(micro_zoos) -> None:
    from uqmerge.zoo.train import train_model

    model_a, processor = load_zoo_model(micro_zoos[0] / "models" / "base")
    model_b, _ = load_zoo_model(micro_zoos[0] / "models" / "base")
    items = generate_family("count", "train", 16, 7)
    data = build_training_set(items, processor, seed=7)
    gate = FamilyGate(torch.zeros(len(items), dtype=torch.long), lr_scale=0.25)
    train_model(model_a, data, TrainConfig(steps=3, lr=1e-3, batch_size=4, seed=2), processor, gate=gate)
    train_model(model_b, data, TrainConfig(steps=3, lr=2.5e-4, batch_size=4, seed=2), processor)
    a, b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh, _ = load_zoo_model(micro_zoos[0] / "models" / "base")
    assert any(not torch.equal(a[k], v) for k, v in fresh.state_dict().items())


def test_held_base_stops_at_the_first_check_that_finds_every_family_at_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.evaluate.open_ended as open_ended

    calls: list[int] = []  # every family scores 0.2 at the first check, then 0.7 (also the in-training scores)

    def scores(model, processor, items, batch_size):
        calls.append(1)
        return {"accuracy": dict.fromkeys(FAMILIES, 0.2 if len(calls) == 1 else 0.7)}

    monkeypatch.setattr(open_ended, "evaluate_open_ended", scores)
    base = dataclasses.replace(MICRO_PRESET.base, hold_below=0.5, hold_check_every=4, hold_validation_items=3)
    preset = dataclasses.replace(MICRO_PRESET, name="micro-stop", base=base, experts=MICRO_PRESET.experts[:1])
    manifest = read_manifest(build_zoo(tmp_path / "held", preset, seed=3))
    trace = manifest["base"]["hold_trace"]
    assert [entry["step"] for entry in trace] == [4, 8]  # the ceiling is 12 steps
    assert [entry["training"] for entry in trace] == [list(FAMILIES), []]
    assert manifest["base"]["steps_taken"] == 8
    assert manifest["experts"][0]["steps_taken"] == MICRO_PRESET.experts[0].steps


def test_held_base_rejects_a_jump_past_the_ceiling_and_retries_it_at_half_the_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.evaluate.open_ended as open_ended
    import uqmerge.zoo.train as train_module

    low, high = dict.fromkeys(FAMILIES, 0.2), dict.fromkeys(FAMILIES, 0.6)
    jump = low | {"colour": 0.9}
    checks = [low, jump, jump, high]  # accepted; rejected; accepted (halvings used up); every family at target
    calls: list[int] = []

    def scores(model, processor, items, batch_size):
        calls.append(1)
        return {"accuracy": checks[min(len(calls), len(checks)) - 1]}

    scales: list[float] = []
    requests: list[tuple[bool, bool]] = []
    original_sample, original_serve = train_module._sample_batch, train_module._serve_state_requests

    def spy_sample(data, config, generator, processor, gate=None):
        if gate is not None:
            scales.append(gate.lr_scale)
        return original_sample(data, config, generator, processor, gate)

    def spy_serve(gate, model, optimizer, saved):
        requests.append((gate.save_state, gate.restore_state))
        return original_serve(gate, model, optimizer, saved)

    monkeypatch.setattr(open_ended, "evaluate_open_ended", scores)
    monkeypatch.setattr(train_module, "_sample_batch", spy_sample)
    monkeypatch.setattr(train_module, "_serve_state_requests", spy_serve)
    base = dataclasses.replace(
        MICRO_PRESET.base,
        steps=24,
        hold_below=0.5,
        hold_check_every=4,
        hold_validation_items=3,
        hold_reject_above=0.65,
        hold_max_halvings=1,
    )
    preset = dataclasses.replace(MICRO_PRESET, name="micro-reject", base=base, experts=MICRO_PRESET.experts[:1])
    manifest = read_manifest(build_zoo(tmp_path / "held", preset, seed=3))
    trace = manifest["base"]["hold_trace"]
    assert [entry["step"] for entry in trace] == [4, 8, 12, 16]
    assert trace[1]["rejected"] == ["colour"] and trace[1]["lr_factor"] == 0.5 and "training" not in trace[1]
    assert trace[2]["training"] == [f for f in FAMILIES if f != "colour"] and trace[2]["lr_factor"] == 1.0
    assert trace[3]["training"] == []
    assert manifest["base"]["steps_taken"] == 16
    assert scales == [1.0] * 8 + [0.5] * 4 + [4 / 5] * 4
    # (save, restore) as the loop serves them after each check: save at accepted checks, restore at the rejected one.
    assert [requests[i] for i in (3, 7, 11, 15)] == [(True, False), (False, True), (True, False), (True, False)]
    assert all(requests[i] == (False, False) for i in range(16) if i not in (3, 7, 11, 15))


def test_restoring_a_saved_training_state_returns_the_weights_and_optimizer_moments() -> None:
    from uqmerge.zoo.train import _serve_state_requests

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    gate = FamilyGate(torch.zeros(1, dtype=torch.long))

    def step() -> None:
        optimizer.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()

    step()
    gate.save_state = True
    saved = _serve_state_requests(gate, model, optimizer, None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    step()
    step()
    assert not torch.equal(model.weight, weights["weight"])
    gate.restore_state = True
    assert _serve_state_requests(gate, model, optimizer, saved) is saved
    assert not gate.restore_state and not gate.save_state
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert all(torch.equal(optimizer.state[model.weight][k], v) for k, v in moments.items())
    gate.restore_state = True
    with pytest.raises(ConfigError, match="before any was saved"):
        _serve_state_requests(gate, model, optimizer, None)


def test_a_jump_counts_only_for_families_that_were_at_or_below_the_ceiling() -> None:
    from uqmerge.zoo.build import jumped_families

    accepted = {"colour": 0.3, "shape": 0.7, "count": 0.65}
    now = {"colour": 0.8, "shape": 0.9, "count": 0.66}
    assert jumped_families(accepted, now, 0.65) == ["colour", "count"]
    assert jumped_families(None, now, 0.65) == []
    assert jumped_families(accepted, now, None) == []


def test_base_recipe_refuses_a_target_outside_zero_to_one() -> None:
    with pytest.raises(ConfigError, match="hold_below"):
        dataclasses.replace(PRESETS["mini"].base, hold_below=1.5)
    with pytest.raises(ConfigError, match="hold_check_every"):
        dataclasses.replace(PRESETS["mini"].base, hold_below=0.5, hold_check_every=0)
    with pytest.raises(ConfigError, match="hold_reject_above"):
        dataclasses.replace(PRESETS["mini"].base, hold_reject_above=0.7)  # no target to hold
    with pytest.raises(ConfigError, match="hold_reject_above"):
        dataclasses.replace(PRESETS["mini"].base, hold_below=0.5, hold_reject_above=0.4)
    with pytest.raises(ConfigError, match="hold_max_halvings"):
        dataclasses.replace(PRESETS["mini"].base, hold_below=0.5, hold_max_halvings=-1)


def test_a_freshly_initialised_model_stops_generating_at_the_end_token(mini_zoo: Path, tmp_path: Path) -> None:
    # An in-memory model scored before its first save (the held base's checks) must stop where a saved one does.
    fresh, processor = load_zoo_model(init_base_model(tmp_path / "init", PRESETS["mini"].architecture, seed=1))
    saved, _ = load_zoo_model(mini_zoo / "models" / "base")
    end_id = processor.tokenizer.convert_tokens_to_ids(END_TOKEN)
    assert end_id in fresh.generation_config.eos_token_id
    assert fresh.generation_config.eos_token_id == saved.generation_config.eos_token_id
    assert fresh.generation_config.pad_token_id == processor.tokenizer.pad_token_id


def test_vision_pretraining_keeps_only_the_tower_and_restarts_the_language_model_from_its_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uqmerge.zoo.build as build_module
    from uqmerge.zoo.train import vision_tower_of

    def snapshot(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        tower = {k: v.clone() for k, v in vision_tower_of(model).state_dict().items()}
        rest = {k: v.clone() for k, v in model.state_dict().items() if "vision_tower" not in k}
        return tower, rest

    runs: list[dict] = []
    original = build_module.train_model

    def spy(model, data, config, processor, on_step=None, gate=None):
        before = snapshot(model)
        stats = original(model, data, config, processor, on_step=on_step, gate=gate)
        runs.append({"config": config, "before": before, "after": snapshot(model)})
        return stats

    monkeypatch.setattr(build_module, "train_model", spy)
    base = dataclasses.replace(
        MICRO_PRESET.base, vision_pretrain_steps=5, vision_pretrain_lr=2e-3, vision_pretrain_batch_size=4
    )
    preset = dataclasses.replace(MICRO_PRESET, name="micro-vision", base=base, experts=MICRO_PRESET.experts[:1])
    assert preset.training_runs == (("vision", 5), ("base", 12), ("specialist-count", 4))
    assert preset.total_steps == 21
    manifest = read_manifest(build_zoo(tmp_path / "zoo", preset, seed=3))

    vision, held, expert = runs
    assert vision["config"].train_vision_tower and vision["config"].steps == 5 and vision["config"].lr == 2e-3
    assert vision["config"].batch_size == 4 and held["config"].batch_size == MICRO_PRESET.base.batch_size
    assert held["config"].lr == MICRO_PRESET.base.lr
    assert not held["config"].train_vision_tower and held["config"].seed != vision["config"].seed
    # The base starts from the pre-trained tower and from the language model's random init, not the pre-trained one.
    for name, tensor in held["before"][0].items():
        assert torch.equal(tensor, vision["after"][0][name]), name
    assert any(not torch.equal(t, vision["before"][0][n]) for n, t in vision["after"][0].items())
    for name, tensor in held["before"][1].items():
        assert torch.equal(tensor, vision["before"][1][name]), name
    assert any(not torch.equal(t, vision["after"][1][n]) for n, t in held["before"][1].items())
    # Frozen through the base and the expert: every saved model carries the pre-trained tower.
    for name, tensor in (*held["after"][0].items(), *expert["after"][0].items()):
        assert torch.equal(tensor, vision["after"][0][name]), name
    saved = _tensors(tmp_path / "zoo" / "models" / "base")
    tower = {k: v for k, v in saved.items() if "vision_tower" in k}
    assert tower and all(torch.equal(v, vision["after"][0][k.split("vision_tower.", 1)[1]]) for k, v in tower.items())
    assert manifest["base"]["vision_pretraining"]["steps_taken"] == 5
    assert manifest["base"]["steps_taken"] == 12 and "pre-trained" in manifest["training"]["vision_tower"]


def test_base_recipe_refuses_negative_vision_pretraining() -> None:
    with pytest.raises(ConfigError, match="vision_pretrain_steps"):
        dataclasses.replace(PRESETS["mini"].base, vision_pretrain_steps=-1)
    with pytest.raises(ConfigError, match="vision_pretrain_batch_size"):
        dataclasses.replace(PRESETS["mini"].base, vision_pretrain_batch_size=0)


def test_unset_base_fields_added_since_v4_leave_a_presets_fingerprint_as_before_they_existed() -> None:
    import hashlib
    import json

    added = (
        "vision_pretrain_steps",
        "vision_pretrain_lr",
        "vision_pretrain_batch_size",
        "hold_reject_above",
        "hold_max_halvings",
    )
    for preset in (PRESETS["mini"], MICRO_PRESET):
        before = preset.as_dict()
        for name in added:
            del before["base"][name]
        expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode("utf-8")).hexdigest()
        assert preset.fingerprint() == expected
        pretrained = dataclasses.replace(preset, base=dataclasses.replace(preset.base, vision_pretrain_steps=10))
        assert pretrained.fingerprint() != expected
        faster = dataclasses.replace(preset, base=dataclasses.replace(preset.base, vision_pretrain_lr=1e-3))
        assert faster.fingerprint() not in {expected, pretrained.fingerprint()}
        smaller = dataclasses.replace(preset, base=dataclasses.replace(preset.base, vision_pretrain_batch_size=8))
        assert smaller.fingerprint() not in {expected, pretrained.fingerprint(), faster.fingerprint()}
        held = dataclasses.replace(preset.base, hold_below=0.5)
        rejecting = dataclasses.replace(preset, base=dataclasses.replace(held, hold_reject_above=0.7))
        patient = dataclasses.replace(
            preset, base=dataclasses.replace(held, hold_reject_above=0.7, hold_max_halvings=1)
        )
        assert len({expected, rejecting.fingerprint(), patient.fingerprint()}) == 3
