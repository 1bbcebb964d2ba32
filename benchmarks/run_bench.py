"""Algorithm 1's merge loop: incremental in-memory merging vs re-merging every prefix through disk.

For n candidates (default 6) it sets Merge(prefix) for t = 1..n two ways on the same checkpoints:
  * ``in-memory``: one resident LLaVA; linear uses the running mean (reads only the new candidate per step);
  * ``via disk``: the research code's way — merge each prefix from scratch into a checkpoint on disk and load
    it with ``from_pretrained`` for scoring (O(n²) tensor reads, n checkpoints written).
It prints tensor bytes read, bytes written and wall time for each (UQ scoring itself is excluded: it is the same
work either way). Example: .venv/bin/python benchmarks/run_bench.py --candidates 6 --hidden 512 --layers 8
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
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--method", default="linear")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from transformers import LlavaForConditionalGeneration

    from uqmerge.checkpoint.synthetic import make_fake_finetune
    from uqmerge.engine.incremental import IncrementalMerger
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.engine.recipe import MergeRecipe, ModelEntry
    from uqmerge.tiny import build_tiny_llava

    torch.set_num_threads(2)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="uqmerge-run-bench-"))
    base = root / "base"
    if not (base / "config.json").exists():
        build_tiny_llava(base, seed=0, hidden=args.hidden, layers=args.layers)
    ids = [f"c{i}" for i in range(args.candidates)]
    paths = {}
    for i, cid in enumerate(ids):
        paths[cid] = root / cid
        if not (paths[cid] / "config.json").exists():
            make_fake_finetune(base, paths[cid], seed=100 + i, scale=0.05)
    params = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(base).parameters())
    print(f"{args.candidates} candidates of {params / 1e6:.1f}M parameters (fp32), method {args.method}")
    merge = MergeRecipe(merge_method=args.method)

    model = LlavaForConditionalGeneration.from_pretrained(base)
    merger = IncrementalMerger.for_candidates(model, base, paths, merge)
    start = time.perf_counter()
    for t in range(1, len(ids) + 1):
        merger.set_prefix(ids[:t])
    mem = {"read": merger.bytes_read, "written": 0, "wall": time.perf_counter() - start}

    disk = {"read": 0, "written": 0, "wall": 0.0}
    out_root = root / "prefixes"
    start = time.perf_counter()
    for t in range(1, len(ids) + 1):
        cfg = merge.for_models(str(base), [ModelEntry(model=str(paths[c])) for c in ids[:t]])
        out = out_root / f"prefix{t}"
        report = merge_to_dir(cfg, out, force=True, quiet=True)
        disk["read"] += report.bytes_read
        disk["written"] += dir_bytes(out)
        LlavaForConditionalGeneration.from_pretrained(out)
        disk["read"] += sum(p.stat().st_size for p in out.glob("*.safetensors"))
    disk["wall"] = time.perf_counter() - start
    shutil.rmtree(out_root, ignore_errors=True)

    print(f"\n{'loop':12s} {'tensor MB read':>15s} {'MB written':>11s} {'wall s':>8s}")
    for name, r in (("in-memory", mem), ("via disk", disk)):
        print(f"{name:12s} {r['read'] / 1e6:15.1f} {r['written'] / 1e6:11.1f} {r['wall']:8.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (whole script)")


if __name__ == "__main__":
    main()
