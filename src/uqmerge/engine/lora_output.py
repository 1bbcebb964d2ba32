"""Merging LoRA experts into one peft LoRA adapter: exact (ranks concatenated) or SVD-truncated per module.

Representation. For a method that is linear in the task vectors, the merged update of a module is
ΔW = Σ_i c_i·s_i·B_i·A_i, with s_i = α_i/r_i (α_i/√r_i for rsLoRA) the adapter's scale and c_i the method's
coefficient: λ·w_i for ``task_arithmetic``, w_i/Σ_j w_j for ``linear``. That is exactly a LoRA of rank
R = Σ_i r_i (over the adapters that target the module):

    B = [c_1·s_1·B_1 | … | c_n·s_n·B_n]  (out, R),    A = [A_1; …; A_n]  (R, in),

saved with r = lora_alpha = R (scale 1; modules whose R differs from the most common one get
``rank_pattern``/``alpha_pattern`` entries keyed by their escaped full module name). ``rank=k`` replaces each
module's factors by the best rank-min(k, R) approximation of B·A (Eckart–Young) without forming B·A: with
B = Q_B·R_B and Aᵀ = Q_A·R_A (reduced QR), B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ, and the SVD U·S·Vᵀ of the small
R×R core gives B' = Q_B·U_k·√S_k, A' = √S_k·V_kᵀ·Q_Aᵀ.

Tensors that an adapter changes without a low-rank factor (``modules_to_save``, trained biases, ``lora_bias``)
are merged like the dense merge does (the method applied to the whole tensors) and saved whole: as
``modules_to_save`` of the output, or as ``<module>.base_layer.<param>`` when the module also carries a LoRA
update. A weight with both a LoRA update and a saved full copy that differs from the base cannot be represented
and is refused; so are non-LoRA ``models:`` entries and methods that are not linear in the task vectors (TIES,
DARE, …: their merge of low-rank updates is not low-rank; merge to a dense checkpoint instead). Tensors that
the plan keeps from the base (the vision tower by default, ``include``/``exclude``) get no update, as in the
dense merge.

The factors are written in fp32 unless ``dtype:`` is set (scaling B in a 16-bit dtype would round it); full tensors
in the plan's output dtype. The output loads with ``PeftModel.from_pretrained(base_model, out_dir)``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from uqmerge.checkpoint.lora import ADAPTER_CONFIG, ADAPTER_SAFETENSORS, PEFT_PREFIX, LoraCheckpoint, LoraUpdate
from uqmerge.checkpoint.reader import SAFE_SINGLE
from uqmerge.checkpoint.writer import ShardedWriter, TensorSpec, check_output_dir
from uqmerge.core.devices import resolve_device, torch_dtype
from uqmerge.core.errors import ConfigError, PlanError
from uqmerge.engine.executor import InputReads, MergeReport
from uqmerge.engine.model_card import merge_model_card, resolved_recipe
from uqmerge.engine.params import ResolvedMethod
from uqmerge.engine.plan import MergePlan, TensorTask, build_plan
from uqmerge.engine.recipe import MergeConfig
from uqmerge.engine.sinks import RECIPE_FILE
from uqmerge.methods.baselines import linear_weights

log = logging.getLogger(__name__)

LINEAR_METHODS = ("linear", "task_arithmetic")
"""Methods whose merge of LoRA updates is itself a LoRA update (linear in the task vectors)."""
_ONE_FILE = 1 << 62


def lora_coefficients(action: ResolvedMethod) -> list[float]:
    """c_i with merged ΔW = Σ_i c_i·ΔW_i: λ·w_i (``task_arithmetic``) or w_i/Σ w (``linear``)."""
    name = action.method.name
    if name not in LINEAR_METHODS:
        raise ConfigError(
            f"lora_output: method {name!r} is not linear in the task vectors, so its merge of LoRA updates is not a "
            f"LoRA update; use one of {list(LINEAR_METHODS)}, or drop `lora_output:` to write a dense checkpoint"
        )
    weights = [float(w) for w in action.per_model["weight"]]
    if name == "linear":
        return linear_weights(weights)
    lam = float(action.params["lambda"])
    return [lam * w for w in weights]


def concat_lora(bs: Sequence[Tensor], as_: Sequence[Tensor], coefficients: Sequence[float]) -> tuple[Tensor, Tensor]:
    """B = [c_1·B_1 | … ], A = [A_1; …]: B·A = Σ_i c_i·B_i·A_i exactly, of rank Σ r_i."""
    b = torch.cat([c * bi for c, bi in zip(coefficients, bs, strict=True)], dim=1)
    return b, torch.cat(list(as_), dim=0)


def truncate_lora(b: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Factors (B', A') of the best rank-``rank`` approximation of B·A (Eckart–Young), via QR of B and Aᵀ.

    B is (out, R), A is (R, in); the SVD is of an at most R×R core, never of the (out, in) product. Singular
    values are split evenly: B' = Q_B·U_k·√S_k, A' = √S_k·V_kᵀ·Q_Aᵀ. fp32 in, fp32 out.
    """
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    return (q_b @ u[:, :k]) * root, root[:, None] * (vh[:k] @ q_a.T)


@dataclass(frozen=True)
class ModuleOutput:
    """One module of the output adapter: its LoRA sources (model index, update, coefficient) and shapes."""

    module: str
    key: str
    kind: str
    sources: tuple[tuple[int, LoraUpdate, float], ...]
    rows: int
    cols: int
    rank: int

    def names(self) -> tuple[str, str]:
        """Output tensor names of (B, A), peft's format."""
        prefix = f"{PEFT_PREFIX}{self.module}."
        if self.kind == "embedding":
            return prefix + "lora_embedding_B", prefix + "lora_embedding_A"
        return prefix + "lora_B.weight", prefix + "lora_A.weight"


@dataclass(frozen=True)
class DenseOutput:
    """A full tensor of the output adapter (``modules_to_save`` or a targeted module's ``base_layer``)."""

    task: TensorTask
    module: str
    name: str


@dataclass
class LoraOutputPlan:
    """What the output adapter holds, decided from headers and configs before any weight is read."""

    plan: MergePlan
    rank: int | None
    factor_dtype: torch.dtype
    modules: list[ModuleOutput]
    dense: list[DenseOutput]
    check_equal_to_base: dict[str, list[tuple[int, LoraUpdate]]]
    fan_in_fan_out: bool

    def specs(self) -> list[TensorSpec]:
        """(name, dtype, shape) of every output tensor."""
        specs: list[TensorSpec] = []
        for m in self.modules:
            b_name, a_name = m.names()
            specs += [(b_name, self.factor_dtype, (m.rows, m.rank)), (a_name, self.factor_dtype, (m.rank, m.cols))]
        specs += [(d.name, d.task.out_dtype, d.task.shape) for d in self.dense]
        return specs

    def modules_to_save(self) -> list[str]:
        lora = {m.module for m in self.modules}
        return sorted({d.module for d in self.dense if d.module not in lora})

    def adapter_config(self) -> dict[str, Any]:
        """peft's ``adapter_config.json`` for the output: scale 1 on every module."""
        from peft import LoraConfig

        ranks = Counter(m.rank for m in self.modules)
        r = ranks.most_common(1)[0][0] if ranks else 1
        pattern = {re.escape(m.module): m.rank for m in self.modules if m.rank != r}
        config = LoraConfig(
            r=r,
            lora_alpha=r,
            target_modules=sorted(m.module for m in self.modules) or None,
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            modules_to_save=self.modules_to_save() or None,
            fan_in_fan_out=self.fan_in_fan_out,
            lora_dropout=0.0,
            bias="none",
            base_model_name_or_path=str(self.plan.base.path.resolve()),
            inference_mode=True,
        )
        data = config.to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}


def _lora_readers(plan: MergePlan) -> list[LoraCheckpoint]:
    readers = []
    for i, m in enumerate(plan.models):
        if not isinstance(m, LoraCheckpoint):
            raise ConfigError(
                f"lora_output: models[{i}] ({m.path}) is not a LoRA adapter; a merged LoRA adapter can only combine "
                "LoRA experts of one base. Drop `lora_output:` to write a dense checkpoint."
            )
        readers.append(m)
    return readers


def plan_lora_output(plan: MergePlan, *, rank: int | None = None) -> LoraOutputPlan:
    """Decide the output adapter's tensors and ranks; ConfigError/PlanError for what it cannot represent."""
    if rank is not None and rank < 1:
        raise ConfigError(f"lora_output: rank must be a positive integer, got {rank}")
    readers = _lora_readers(plan)
    modules: list[ModuleOutput] = []
    full_only: list[TensorTask] = []
    check_equal: dict[str, list[tuple[int, LoraUpdate]]] = {}
    kept: list[str] = []
    fan_in_fan_out: set[bool] = set()
    for task in plan.tasks:
        found = [(i, r.updates[task.name]) for i, r in enumerate(readers) if task.name in r.updates]
        if not found:
            continue
        if task.action is None:
            kept.append(task.name)
            continue
        coefficients = lora_coefficients(task.action)
        low = [(i, u) for i, u in found if u.low_rank]
        full = [(i, u) for i, u in found if u.replacement is not None]
        if not low:
            full_only.append(task)
            continue
        first_reader, first = readers[low[0][0]], low[0][1]
        if len({u.kind for _, u in low}) > 1:
            raise PlanError(f"lora_output: the adapters update {task.name!r} both as a linear and an embedding layer")
        fan_in_fan_out |= {u.fan_in_fan_out for _, u in low if u.kind == "linear"}
        rows, cols = _factor_shape(first_reader, first)
        total = sum(u.rank for _, u in low)
        out_rank = total if rank is None else min(rank, total, rows, cols)
        sources = tuple((i, u, coefficients[i] * u.scale) for i, u in low)
        modules.append(ModuleOutput(first.module, task.name, str(first.kind), sources, rows, cols, out_rank))
        if full:
            check_equal[task.name] = full
    if len(fan_in_fan_out) > 1:
        raise PlanError("lora_output: the adapters disagree on fan_in_fan_out for the same base")
    lora_modules = {m.module for m in modules}
    dense = [_dense_output(task, plan.layout.module_name(task.name), lora_modules) for task in full_only]
    if kept:
        log.warning(
            "lora_output: %d tensor(s) updated by the adapters are kept from the base by the plan (components, "
            "include/exclude), e.g. %s; the output adapter does not update them, as the dense merge would not",
            len(kept),
            kept[0],
        )
    if not modules and not dense:
        raise PlanError(
            "lora_output: the merged adapter would be empty: no tensor the adapters update is merged by the plan"
        )
    dtype = torch_dtype(plan.config.dtype) if plan.config.dtype else torch.float32
    return LoraOutputPlan(plan, rank, dtype, modules, dense, check_equal, fan_in_fan_out == {True})


def _factor_shape(reader: LoraCheckpoint, update: LoraUpdate) -> tuple[int, int]:
    """(rows of B, columns of A) in peft's orientation, from the adapter's header."""
    if update.lora_a is None or update.lora_b is None:
        raise PlanError(f"{update.key}: not a low-rank update")
    return reader.weights.infos[update.lora_b].shape[0], reader.weights.infos[update.lora_a].shape[1]


def _dense_output(task: TensorTask, param: str, lora_modules: set[str]) -> DenseOutput:
    """A merged full tensor: ``<module>.base_layer.<leaf>`` in a LoRA module, else a modules_to_save tensor."""
    module, leaf = param.rsplit(".", 1)
    name = f"{module}.base_layer.{leaf}" if module in lora_modules else param
    return DenseOutput(task, module, PEFT_PREFIX + name)


class _Execution:
    """Reads (through the executor's :class:`InputReads`), merges and writes the output adapter's tensors."""

    def __init__(self, out: LoraOutputPlan, reads: InputReads) -> None:
        self.out = out
        self.readers: list[LoraCheckpoint] = _lora_readers(out.plan)
        self.reads = reads

    def factors(self, module: ModuleOutput) -> tuple[Tensor, Tensor]:
        bs, as_, cs = [], [], []
        for i, update, coefficient in module.sources:
            reader = self.readers[i]
            b, a = (self.reads.count(factor) for factor in reader.read_factors(update))
            bs.append(self.reads.compute(b, reader.weights.file, str(update.lora_b)))
            as_.append(self.reads.compute(a, reader.weights.file, str(update.lora_a)))
            cs.append(coefficient)
        b, a = concat_lora(bs, as_, cs)
        if self.out.rank is not None:
            b, a = truncate_lora(b, a, module.rank)
        return b, a

    def check_equal_to_base(self, key: str) -> None:
        copies = self.out.check_equal_to_base.get(key, [])
        base = self.out.plan.base.read(key) if copies else None
        for i, update in copies:
            saved = self.readers[i].read_replacement(update)
            if saved is None or base is None or not torch.equal(saved.to(base.dtype), base):
                raise PlanError(
                    f"lora_output: {self.readers[i].weights.file} saves a full copy of {key!r} that differs from the "
                    "base, and the tensor also has a LoRA update; one LoRA adapter cannot carry both. Drop "
                    "`lora_output:` to write a dense checkpoint."
                )

    def dense(self, item: DenseOutput) -> Tensor:
        task, plan = item.task, self.out.plan
        if task.action is None:
            raise PlanError(f"{task.name}: kept from the base, not merged")
        models = [self.reads.read(r, task.name) for r in self.readers]
        method = task.action.method
        base = self.reads.read(plan.base, task.name) if method.requires_base else None
        return method.run(task.name, models, base, task.action.arguments)


def _model_card(out: LoraOutputPlan, recipe: dict[str, Any]) -> str:
    """The merge's model card (:func:`~uqmerge.engine.model_card.merge_model_card`) for a peft adapter, with a
    section on its LoRA modules."""
    ranks = Counter(m.rank for m in out.modules)
    how = "ranks concatenated (exact)" if out.rank is None else f"SVD-truncated to rank ≤ {out.rank} per module"
    section = [
        "## LoRA adapter",
        "",
        f"{len(out.modules)} LoRA module(s), {how}; ranks {dict(sorted(ranks.items()))}; scale 1 (lora_alpha = r); "
        f"factors in `{recipe['lora_output']['factor_dtype']}`.",
        f"{len(out.dense)} merged full tensor(s) (modules_to_save, base-layer biases). Load with "
        "`PeftModel.from_pretrained(base_model, this_dir)`.",
        "",
    ]
    return merge_model_card(
        out.plan, recipe, library_name="peft", tags=("merge", "uqmerge", "lora"), extra_sections=["\n".join(section)]
    )


def merge_lora_adapters(
    config: MergeConfig,
    out_dir: str | Path,
    *,
    rank: int | None = None,
    device: str = "cpu",
    force: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    quiet: bool = False,
) -> MergeReport:
    """Merge the LoRA experts of ``config`` into one peft LoRA adapter in ``out_dir`` (see the module docstring).

    ``rank`` None concatenates the ranks (exactly the dense merge's update); an integer truncates each module to
    its best rank-``rank`` approximation. Everything is checked before writing; the output appears atomically.
    """
    out_path = Path(out_dir)
    check_output_dir(out_path, force=force)
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("lora_output: writing a peft adapter needs peft: pip install 'uqmerge[lora]'")
    plan = build_plan(config, allow_pickle=allow_pickle)
    out = plan_lora_output(plan, rank=rank)
    reads = InputReads(resolve_device(device), allow_nonfinite)
    run = _Execution(out, reads)
    report = MergeReport()
    writer = ShardedWriter(out_path, out.specs(), max_shard_size=_ONE_FILE, force=force)
    progress = Progress(
        TextColumn("[bold]merging LoRA"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=quiet
    )
    try:
        with torch.no_grad(), progress:
            for module in progress.track(out.modules, description="modules"):
                run.check_equal_to_base(module.key)
                b, a = run.factors(module)
                b_name, a_name = module.names()
                writer.write(b_name, b.to(dtype=out.factor_dtype, device="cpu"))
                writer.write(a_name, a.to(dtype=out.factor_dtype, device="cpu"))
                report.tensors += 2
            for item in out.dense:
                writer.write(item.name, run.dense(item).to(dtype=item.task.out_dtype, device="cpu"))
                report.tensors += 1
        writer.add_file(ADAPTER_CONFIG, json.dumps(out.adapter_config(), indent=2, sort_keys=True) + "\n")
        recipe = resolved_recipe(plan)
        recipe["lora_output"] = {
            "rank": rank,
            "factor_dtype": str(out.factor_dtype).removeprefix("torch."),
            "module_ranks": {m.module: m.rank for m in out.modules},
            "modules_to_save": out.modules_to_save(),
        }
        writer.add_file(RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
        writer.add_file("README.md", _model_card(out, recipe))
        # The writer names a single shard model.safetensors; peft looks for adapter_model.safetensors.
        os.replace(writer.tmp_dir / SAFE_SINGLE, writer.tmp_dir / ADAPTER_SAFETENSORS)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    report.bytes_read = reads.bytes_read
    log.info("wrote LoRA adapter %s (%d modules, %d full tensors)", out_path, len(out.modules), len(out.dense))
    return report
