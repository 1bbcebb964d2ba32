"""Blockwise merging: row-range reads, exact magnitude selection, and block results equal to whole-tensor ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.writer import ShardedWriter
from uqmerge.core.errors import CheckpointError
from uqmerge.engine.executor import MergeReport, execute_plan, rows_per_block, tensor_seed
from uqmerge.engine.merge import merge_to_dir
from uqmerge.engine.plan import build_plan
from uqmerge.engine.recipe import parse_merge_config
from uqmerge.methods import MergeInputs, get_method
from uqmerge.methods.baselines import BASELINE_METHODS
from uqmerge.methods.magnitude import MagnitudeSelector, magnitude_keys, select_magnitude_cuts

PARAMS = {
    "linear": {},
    "task_arithmetic": {"lambda": 0.7},
    "ties": {"density": 0.3, "lambda": 0.9},
    "dare_linear": {"density": 0.5},
    "dare_ties": {"density": 0.4},
    "della": {"density": 0.5, "epsilon": 0.2},
    "breadcrumbs": {"density": 0.4, "gamma": 0.1},
    "model_stock": {},
}
WITH_STATISTICS = {"ties", "breadcrumbs", "model_stock"}
# Model Stock's norms and dot products are summed block by block, so its t (and output) may differ from the
# whole-tensor one by fp32 rounding; every other baseline must match bit for bit.
ROUNDING_ONLY = {"model_stock"}
SEED = 11
N_EXPERTS = 3


class MemorySink:
    """A TensorSink keeping the merged tensors in a dict."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor.clone()

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _config(family: dict[str, Path], method: str) -> dict:
    return {
        "merge_method": method,
        "base_model": str(family["base"]),
        "models": [{"model": str(family[f"expert{i}"])} for i in range(N_EXPERTS)],
        "parameters": PARAMS[method],
        "seed": SEED,
    }


def _execute(family, method, **options) -> tuple[dict[str, torch.Tensor], MergeReport]:
    sink = MemorySink()
    report = execute_plan(build_plan(parse_merge_config(_config(family, method))), sink, quiet=True, **options)
    return sink.tensors, report


def _whole_tensor_reference(family, method: str) -> dict[str, torch.Tensor]:
    """Each merged tensor as ``method.merge`` computes it on whole fp32 tensors, seeded per the contract."""
    plan = build_plan(parse_merge_config(_config(family, method)))
    m = get_method(method)
    out = {}
    for task in plan.tasks:
        base = plan.base.read(task.name)
        if task.action is None:
            out[task.name] = base.to(task.out_dtype)
            continue
        models = [r.read(task.name).float() for r in plan.models]
        generators = None
        if m.randomized:
            generators = [torch.Generator().manual_seed(tensor_seed(SEED, task.name, i)) for i in range(N_EXPERTS)]
        inputs = MergeInputs(
            task.name, models, base.float(), task.action.per_model, task.action.params, generators=generators
        )
        out[task.name] = m.merge(inputs).to(task.out_dtype)
    return out


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], method: str) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        if method in ROUNDING_ONLY:
            torch.testing.assert_close(got[name].float(), tensor.float(), rtol=1e-6, atol=1e-7, msg=name)
        else:
            assert torch.equal(got[name], tensor), f"{method}: {name} differs from the whole-tensor merge"


@pytest.fixture(scope="module")
def bf16_family(llava_family, tmp_path_factory) -> dict[str, Path]:
    """The tiny LLaVA family stored in bfloat16: task vectors on a coarse grid, so magnitudes tie massively."""
    root = tmp_path_factory.mktemp("llava-bf16")
    out = {}
    for key, src in llava_family.items():
        reader = CheckpointReader(src)
        specs = [(n, torch.bfloat16, reader.info(n).shape) for n in reader.names]
        with ShardedWriter(root / key, specs, max_shard_size=10**9) as writer:
            for name in reader.names:
                writer.write(name, reader.read(name).to(torch.bfloat16))
            writer.copy_aux_files(src)
            config = {**reader.config, "dtype": "bfloat16"}
            config.pop("torch_dtype", None)
            writer.add_file("config.json", json.dumps(config))
            writer.commit()
        out[key] = root / key
    return out


# --------------------------------------------------------------------------------------- the seeding contract


@pytest.mark.parametrize(
    ("total", "block"),
    [(t, b) for t in (1, 15, 16, 17, 1000, 65_537) for b in (1, 7, 16, 4096)]
    + [(1_000_003, 4096), (1_000_003, 65_537), (1_000_003, 333_333)],
)
def test_torch_rand_on_consecutive_blocks_continues_one_stream(total, block):
    """The property the seeding contract relies on: block draws from one CPU generator equal one whole draw."""
    whole = torch.rand(total, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    parts = [torch.rand(min(block, total - s), generator=generator) for s in range(0, total, block)]
    assert torch.equal(torch.cat(parts), whole)


def test_row_blocks_of_a_matrix_draw_what_the_whole_matrix_draws():
    whole = torch.rand(37, 29, generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    parts = [torch.rand(rows, 29, generator=generator) for rows in (3, 1, 10, 23)]
    assert torch.equal(torch.cat(parts), whole)


def test_model_seeds_are_distinct_and_stable():
    seeds = {tensor_seed(0, "a.weight", i) for i in range(4)} | {tensor_seed(0, "a.weight")}
    assert len(seeds) == 5
    assert tensor_seed(0, "a.weight", 1) == tensor_seed(0, "a.weight", 1) != tensor_seed(1, "a.weight", 1)


# ------------------------------------------------------------------------------------------ row-range reads


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "m": torch.randn(5, 3, generator=g),
        "v": torch.randn(7, generator=g).to(torch.bfloat16),
        "t": torch.arange(24, dtype=torch.int64).reshape(4, 2, 3),
        "s": torch.tensor(2.5),
    }


@pytest.mark.parametrize("kind", ["safetensors", "pickle"])
def test_read_rows_equals_slicing_the_whole_tensor(tmp_path, kind):
    tensors = _tensors()
    if kind == "safetensors":
        save_file(tensors, tmp_path / "model.safetensors")
    else:
        torch.save(tensors, tmp_path / "pytorch_model.bin")
    reader = CheckpointReader(tmp_path, allow_pickle=kind == "pickle")
    for name, tensor in tensors.items():
        if tensor.dim() == 0:
            continue
        for start in range(tensor.shape[0] + 1):
            for stop in range(start, tensor.shape[0] + 1):
                rows = reader.read_rows(name, start, stop)
                assert rows.dtype == tensor.dtype and torch.equal(rows, tensor[start:stop]), (name, start, stop)


def test_read_rows_rejects_bad_ranges_and_scalars_naming_the_tensor(tmp_path):
    save_file(_tensors(), tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path)
    with pytest.raises(CheckpointError, match=r"rows \[4, 6\) out of range for tensor 'm'"):
        reader.read_rows("m", 4, 6)
    with pytest.raises(CheckpointError, match="'s' is 0-D"):
        reader.read_rows("s", 0, 1)


def test_rows_per_block_respects_the_budget_down_to_one_row():
    assert rows_per_block((100, 10), 8, 800) == 10  # 80 bytes a row
    assert rows_per_block((100, 10), 8, 79) == 1  # one row even when it exceeds the budget
    assert rows_per_block((100, 10), 8, 10**9) == 100
    assert rows_per_block((50,), 4, 40) == 10  # 1-D: a row is one entry


# ---------------------------------------------------------------------------------- exact magnitude selection


def _reference_mask(x: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.argsort(x.abs().reshape(-1), descending=True, stable=True)
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def _sample(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, generator=g)
    if kind == "quantized":
        return torch.randint(-3, 4, (n,), generator=g).float() / 4
    x = torch.zeros(n)
    x[: n // 10] = torch.randn(n // 10, generator=g)
    return x


@pytest.mark.parametrize("kind", ["gaussian", "quantized", "mostly-zero"])
@pytest.mark.parametrize("n", [1, 2, 97, 2000])
def test_magnitude_cuts_match_a_stable_descending_argsort(kind, n):
    x = _sample(kind, n, n)
    counts = sorted({0, 1, n // 3, n // 2, n - 1, n, n + 5})
    keys = magnitude_keys(x)
    for count, cut in zip(counts, select_magnitude_cuts(keys, counts), strict=True):
        assert torch.equal(cut.mask(keys), _reference_mask(x, min(count, n))), count


@pytest.mark.parametrize("kind", ["gaussian", "quantized", "mostly-zero"])
@pytest.mark.parametrize("block", [1, 13, 500])
@pytest.mark.parametrize("max_kept", [None, 0])
def test_streamed_magnitude_cuts_equal_whole_tensor_cuts(kind, block, max_kept):
    """Streaming over blocks (two passes, or three when ties must be located block by block) is exact."""
    n = 1500
    x = _sample(kind, n, 1)
    keys = magnitude_keys(x)
    counts = [0, 1, 450, 451, 1499, 1500]
    selector = MagnitudeSelector(n, counts, max_kept=max_kept)
    passes = 0
    while True:
        passes += 1
        for start in range(0, n, block):
            selector.observe(keys[start : start + block], start)
        if not selector.end_pass():
            break
    assert passes <= 3
    for count, cut in zip(counts, selector.cuts(), strict=True):
        streamed = torch.cat([cut.mask(keys[s : s + block], s) for s in range(0, n, block)])
        assert torch.equal(streamed, _reference_mask(x, count)), count


def test_magnitude_keys_order_like_absolute_values():
    x = torch.tensor([-0.0, 0.0, -1.5, 1.5, 2.0, float("inf"), -3.0, 1e-30])
    keys = magnitude_keys(x)
    assert keys[0] == keys[1] == 0 and keys[2] == keys[3]
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(x.abs(), stable=True))


# ------------------------------------------------------------------------ block results equal whole-tensor ones


def test_every_baseline_has_a_block_protocol_and_a_test_setting():
    assert set(PARAMS) == {m.name for m in BASELINE_METHODS}
    assert all(m.blockwise is not None for m in BASELINE_METHODS)
    assert get_method("della").blockwise.row_wise
    assert not get_method("ties").blockwise.row_wise


BUDGETS = {
    "one-block": (10**9, 0),
    "one-row-reread": (1, 0),
    "few-rows-reread": (3000, 0),
    "one-row-cached": (1, 10**9),
}
CASES = [(m, b) for m in sorted(PARAMS) for b in BUDGETS if b != "one-row-cached" or m in WITH_STATISTICS]


@pytest.fixture(scope="module")
def whole_tensor_references(llava_family) -> dict[str, dict[str, torch.Tensor]]:
    return {method: _whole_tensor_reference(llava_family, method) for method in PARAMS}


@pytest.mark.parametrize(("method", "budget"), CASES)
def test_blockwise_merge_equals_the_whole_tensor_merge(llava_family, whole_tensor_references, method, budget):
    """Every tensor of a merge in blocks of one row, a few rows, or one block equals ``method.merge`` on it."""
    max_block_bytes, max_cache_bytes = BUDGETS[budget]
    got, report = _execute(llava_family, method, max_block_bytes=max_block_bytes, max_cache_bytes=max_cache_bytes)
    _assert_same(got, whole_tensor_references[method], method)
    if budget == "one-block":
        assert report.blocked_tensors == 0 and report.bytes_reread == 0
        return
    assert report.blocked_tensors > 0
    plan = build_plan(parse_merge_config(_config(llava_family, method)))
    assert report.bytes_read - report.bytes_reread == plan.input_bytes()  # each input read once, plus re-reads
    assert (report.bytes_reread > 0) == (method in WITH_STATISTICS and max_cache_bytes == 0)


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "della", "dare_ties"])
def test_blockwise_merge_is_exact_on_bfloat16_inputs_with_massive_magnitude_ties(bf16_family, method):
    got, report = _execute(bf16_family, method, max_block_bytes=2000, max_cache_bytes=0)
    assert report.blocked_tensors > 0
    want = _whole_tensor_reference(bf16_family, method)
    assert all(t.dtype == torch.bfloat16 for t in want.values() if t.is_floating_point())
    _assert_same(got, want, method)


def test_merge_to_dir_takes_the_block_budget_and_writes_the_whole_tensor_result(llava_family, tmp_path):
    merge_to_dir(parse_merge_config(_config(llava_family, "ties")), tmp_path / "out", quiet=True, max_block_bytes=1)
    reader = CheckpointReader(tmp_path / "out")
    want = _whole_tensor_reference(llava_family, "ties")
    assert set(reader.names) == set(want)
    for name, tensor in want.items():
        assert torch.equal(reader.read(name), tensor), name


def test_methods_without_a_block_protocol_get_whole_tensors(llava_family):
    cfg = _config(llava_family, "linear")
    cfg["merge_method"], cfg["models"] = "slerp", cfg["models"][:2]
    assert get_method("slerp").blockwise is None
    plan = build_plan(parse_merge_config(cfg))
    tiny, whole = MemorySink(), MemorySink()
    report = execute_plan(plan, tiny, quiet=True, max_block_bytes=1)
    execute_plan(plan, whole, quiet=True)
    assert report.blocked_tensors == 0
    assert all(torch.equal(tiny.tensors[n], whole.tensors[n]) for n in whole.tensors)


def test_keep_base_differences_are_found_block_by_block(llava_family, tmp_path):
    from uqmerge.checkpoint.synthetic import make_fake_finetune

    odd = make_fake_finetune(llava_family["base"], tmp_path / "odd", seed=5, components=("vision_tower",))
    cfg = {"merge_method": "linear", "base_model": str(llava_family["base"]), "models": [{"model": str(odd)}]}
    plan = build_plan(parse_merge_config(cfg))
    blocked = execute_plan(plan, MemorySink(), quiet=True, max_block_bytes=1)
    whole = execute_plan(plan, MemorySink(), quiet=True)
    assert blocked.keep_base_differences and blocked.keep_base_differences == whole.keep_base_differences


def test_invalid_block_budget_is_refused(llava_family):
    plan = build_plan(parse_merge_config(_config(llava_family, "linear")))
    with pytest.raises(Exception, match="max block size must be positive"):
        execute_plan(plan, MemorySink(), quiet=True, max_block_bytes=0)


def test_nonfinite_rows_are_refused_in_blocks(llava_family, tmp_path):
    from safetensors.torch import load_file

    name = "language_model.model.embed_tokens.weight"
    bad = tmp_path / "bad"
    shutil.copytree(llava_family["expert1"], bad)
    tensors = load_file(bad / "model.safetensors")
    tensors[name][-1, -1] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    cfg = _config(llava_family, "ties")
    cfg["models"][1]["model"] = str(bad)
    with pytest.raises(CheckpointError, match="NaN or Inf") as e:
        execute_plan(build_plan(parse_merge_config(cfg)), MemorySink(), quiet=True, max_block_bytes=1)
    assert str(bad) in str(e.value) and name in str(e.value)
