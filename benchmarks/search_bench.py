"""`uqmerge search`'s grid: every point merged into one resident model vs written to disk and reloaded per point.

For a grid of ``--points`` values (default 6, λ of task arithmetic over ``--experts`` fake fine-tunes of a tiny
LLaVA) it makes the merge at every value two ways on the same checkpoints:
  * ``resident``: what `uqmerge search` does — one model in memory, set to Merge(value) by
    ``IncrementalMerger.set_config`` (the streaming executor writing into the model's parameters);
  * ``via disk``: the research code's way — merge each value into a checkpoint with ``merge_to_dir`` and load it
    with ``from_pretrained`` for scoring.
It prints tensor bytes read, bytes written and wall time for each, checks that both give the same weights at every
point, and excludes the scoring itself (the same work either way). Example:

    .venv/bin/python benchmarks/search_bench.py --points 6 --hidden 512 --layers 8
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--parameter", default="lambda")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import LlavaForConditionalGeneration

    from uqmerge.checkpoint.synthetic import make_fake_finetune
    from uqmerge.engine.incremental import IncrementalMerger
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.engine.recipe import MergeRecipe, ModelEntry
    from uqmerge.pipeline.search_config import with_parameter
    from uqmerge.tiny import build_tiny_llava

    torch.set_num_threads(2)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="uqmerge-search-bench-"))
    base = root / "base"
    if not (base / "config.json").exists():
        build_tiny_llava(base, seed=0, hidden=args.hidden, layers=args.layers)
    experts = []
    for i in range(args.experts):
        path = root / f"expert{i}"
        if not (path / "config.json").exists():
            make_fake_finetune(base, path, seed=100 + i, scale=0.05)
        experts.append(ModelEntry(model=str(path)))
    grid = [round(0.25 * (i + 1), 2) for i in range(args.points)]
    recipe = MergeRecipe(merge_method=args.method)
    configs = [with_parameter(recipe, str(base), experts, args.parameter, value) for value in grid]
    params = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(base).parameters())
    print(
        f"{args.points} grid points of {args.parameter} {grid}, {args.method} over {args.experts} experts of "
        f"{params / 1e6:.1f}M parameters (fp32)"
    )

    model = LlavaForConditionalGeneration.from_pretrained(base)
    merger = IncrementalMerger(model)
    resident_states = []
    wall = 0.0
    for cfg in configs:
        start = time.perf_counter()
        merger.set_config(cfg)
        wall += time.perf_counter() - start
        # Kept for the equality check below, outside the timing.
        resident_states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    mem = {"read": merger.bytes_read, "written": 0, "wall": wall}

    disk = {"read": 0, "written": 0, "wall": 0.0}
    out_root = root / "points"
    worst = 0.0
    start = time.perf_counter()
    disk_models = []
    for i, cfg in enumerate(configs):
        out = out_root / f"point{i}"
        report = merge_to_dir(cfg, out, force=True, quiet=True)
        disk["read"] += report.bytes_read
        disk["written"] += dir_bytes(out)
        disk_models.append(LlavaForConditionalGeneration.from_pretrained(out))
        disk["read"] += sum(p.stat().st_size for p in out.glob("*.safetensors"))
    disk["wall"] = time.perf_counter() - start
    for state, loaded in zip(resident_states, disk_models, strict=True):
        for name, tensor in loaded.state_dict().items():
            worst = max(worst, float((tensor - state[name]).abs().max()))
    shutil.rmtree(out_root, ignore_errors=True)

    print(f"\n{'grid':12s} {'tensor MB read':>15s} {'MB written':>11s} {'wall s':>8s}")
    for name, r in (("resident", mem), ("via disk", disk)):
        print(f"{name:12s} {r['read'] / 1e6:15.1f} {r['written'] / 1e6:11.1f} {r['wall']:8.2f}")
    print(f"max |resident − via disk| over every tensor and point: {worst:.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (whole script)")


if __name__ == "__main__":
    main()
