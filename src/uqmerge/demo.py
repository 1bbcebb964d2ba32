"""`uqmerge demo`: a self-contained merge of tiny LLaVA models that the command builds itself.

This is the interim demo until the miniature zoo lands: a random tiny LLaVA base, three fake fine-tunes
(seeded task vectors on the projector and language model), every registered method that fits, and a check
that each merged checkpoint loads with ``from_pretrained`` and generates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.config import parse_merge_config
from uqmerge.engine.merge import merge_to_dir
from uqmerge.methods import get_method, method_names

log = logging.getLogger(__name__)
DEMO_EXPERTS = 3


def _build_inputs(workdir: Path) -> tuple[Path, list[Path]]:
    from uqmerge.checkpoint.synthetic import make_fake_finetune
    from uqmerge.tiny import build_tiny_llava

    base = workdir / "models" / "base"
    if not (base / "config.json").exists():
        build_tiny_llava(base, seed=0)
    experts = []
    for i in range(DEMO_EXPERTS):
        path = workdir / "models" / f"expert{i}"
        if not (path / "config.json").exists():
            make_fake_finetune(base, path, seed=1000 + i, scale=0.05)
        experts.append(path)
    return base, experts


def _max_lm_change(base: CheckpointReader, out: CheckpointReader) -> float:
    return max(
        float((out.read(n).float() - base.read(n).float()).abs().max())
        for n in base.names
        if n.startswith("language_model.")
    )


def run_demo(workdir: Path, *, quiet: bool = False) -> list[tuple[str, int, str, str, str]]:
    """Merge the demo models with each method that accepts 3 models; return one table row per method."""
    from transformers import LlavaForConditionalGeneration

    workdir.mkdir(parents=True, exist_ok=True)
    base, experts = _build_inputs(workdir)
    base_reader = CheckpointReader(base)
    rows = []
    for name in method_names():
        method = get_method(name)
        if method.min_models > DEMO_EXPERTS or (
            method.max_models is not None and method.max_models < DEMO_EXPERTS
        ):
            log.info("skipping %s (needs %s–%s models)", name, method.min_models, method.max_models)
            continue
        cfg = parse_merge_config(
            {"merge_method": name, "base_model": str(base), "models": [{"model": str(p)} for p in experts]}
        )
        out = workdir / "merged" / name
        start = time.perf_counter()
        report = merge_to_dir(cfg, out, force=True, quiet=True)
        seconds = time.perf_counter() - start
        model = LlavaForConditionalGeneration.from_pretrained(out)
        ids = torch.tensor([[model.config.text_config.bos_token_id or 1, 5, 6]])
        generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        ok = "ok" if generated.shape[1] > ids.shape[1] else "no tokens"
        rows.append(
            (
                name,
                report.tensors,
                f"{_max_lm_change(base_reader, CheckpointReader(out)):.4f}",
                ok,
                f"{seconds:.2f}",
            )
        )
        log.info("%s: merged %d tensors in %.2fs", name, report.tensors, seconds)
    return rows
