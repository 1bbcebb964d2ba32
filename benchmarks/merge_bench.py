"""Merge benchmark: wall time, input throughput and peak RSS per method, against read and in-memory baselines.

Builds a LLaVA-shaped random base and N fake fine-tunes (bf16) of about ``--params`` parameters, then runs, each
in its own process so peak RSS is per run:
  * ``read``: reading every input tensor once through the same reader (the I/O floor of any merge);
  * each method through ``uqmerge`` (streaming engine);
  * ``in_memory_ties``: the research-code approach to TIES — load whole state dicts, flatten every task vector
    into one vector, trim with a global k-th value, elect, disjoint-merge, save (``--in-memory-baseline``).
Files are freshly written, so reads usually come from the page cache: the figures measure compute and memory
traffic more than disk speed. ``GB read`` counts every byte read, including statistics passes that re-read the
rows of tensors too large to keep (TIES, Breadcrumbs, Model Stock; see ``uqmerge.engine.executor``). Example:
    .venv/bin/python benchmarks/merge_bench.py --params 540e6 --experts 4 --methods linear ties
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def llava_like_shapes(params: float, *, hidden: int = 1024, vocab: int = 32000) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a LLaVA-hf checkpoint with about ``params`` parameters (legacy on-disk keys)."""
    ff = int(hidden * 2.75)
    per_layer = 4 * hidden * hidden + 3 * hidden * ff + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    vision = 64 * 3 * 14 * 14 + 2 * (4 * 256 * 256 + 2 * 256 * 1024)  # a small CLIP-like tower
    projector = 256 * hidden + hidden * hidden + 2 * hidden
    layers = max(1, round((params - fixed - vision - projector) / per_layer))
    shapes: dict[str, tuple[int, ...]] = {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (64, 3, 14, 14)
    }
    for i in range(2):
        p = f"vision_tower.vision_model.encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (256, 256)
        shapes[f"{p}mlp.fc1.weight"] = (1024, 256)
        shapes[f"{p}mlp.fc2.weight"] = (256, 1024)
    shapes["multi_modal_projector.linear_1.weight"] = (hidden, 256)
    shapes["multi_modal_projector.linear_1.bias"] = (hidden,)
    shapes["multi_modal_projector.linear_2.weight"] = (hidden, hidden)
    shapes["multi_modal_projector.linear_2.bias"] = (hidden,)
    shapes["language_model.model.embed_tokens.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"language_model.model.layers.{i}."
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{p}mlp.gate_proj.weight"] = (ff, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (ff, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, ff)
    shapes["language_model.model.norm.weight"] = (hidden,)
    shapes["language_model.lm_head.weight"] = (vocab, hidden)
    return shapes


CONFIG = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "dtype": "bfloat16"}


def build_inputs(root: Path, params: float, experts: int) -> tuple[Path, list[Path]]:
    """Write (or reuse) the base and ``experts`` fake fine-tunes under ``root``."""
    from uqmerge.checkpoint.synthetic import make_random_checkpoint

    shapes = llava_like_shapes(params)
    base = root / "base"
    if not (base / "config.json").exists():
        make_random_checkpoint(base, shapes, seed=0, config=CONFIG)
    paths = []
    for i in range(experts):
        p = root / f"expert{i}"
        if not (p / "config.json").exists():
            make_random_checkpoint(p, shapes, seed=i + 1, config=CONFIG, base_dir=base, noise=0.05)
        paths.append(p)
    return base, paths


def child_read(base: str, experts: list[str]) -> dict:
    from uqmerge.checkpoint.reader import CheckpointReader

    total = 0
    for path in [base, *experts]:
        reader = CheckpointReader(path)
        for name in reader.names:
            tensor = reader.read(name)
            total += tensor.numel() * tensor.element_size()
    return {"bytes_read": total}


def child_merge(
    base: str, experts: list[str], method: str, out: str, params: dict, max_block_bytes: int | None
) -> dict:
    from uqmerge.engine.merge import merge_to_dir
    from uqmerge.engine.recipe import parse_merge_config

    # The synthetic checkpoint has LLaVA's names but not the shapes of a LlavaForConditionalGeneration config, so
    # it is classified by the built-in name rules rather than derived from the class.
    cfg = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": e} for e in experts],
        "parameters": params,
        "layout": "llava",
    }
    options = {} if max_block_bytes is None else {"max_block_bytes": max_block_bytes}
    report = merge_to_dir(parse_merge_config(cfg), out, force=True, quiet=True, **options)
    return {"bytes_read": report.bytes_read, "bytes_reread": report.bytes_reread, "blocked": report.blocked_tensors}


def child_in_memory_ties(base: str, experts: list[str], out: str, density: float) -> dict:
    """TIES as the original research code does it: whole models in memory, one flattened vector per model."""
    import torch
    from safetensors.torch import load_file, save_file

    def load(path: str) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            state.update(load_file(f))
        return state

    base_sd = load(base)
    names = list(base_sd)
    base_vec = torch.cat([base_sd[n].float().flatten() for n in names])
    tvs = torch.stack([torch.cat([t[n].float().flatten() for n in names]) - base_vec for t in map(load, experts)])
    k = int(tvs.shape[1] * (1 - density))
    kth = tvs.abs().kthvalue(k, dim=1, keepdim=True).values
    tvs = tvs * (tvs.abs() >= kth)
    sign = torch.sign(tvs.sum(0))
    agree = (torch.sign(tvs) == sign) & (tvs != 0)
    merged = (tvs * agree).sum(0) / agree.sum(0).clamp(min=1)
    result = base_vec + merged
    out_sd, offset = {}, 0
    for n in names:
        numel = base_sd[n].numel()
        out_sd[n] = result[offset : offset + numel].reshape(base_sd[n].shape).to(base_sd[n].dtype)
        offset += numel
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(out_sd, Path(out) / "model.safetensors")
    return {"bytes_read": sum(f.stat().st_size for p in [base, *experts] for f in Path(p).glob("*.safetensors"))}


def peak_rss_mb() -> float:
    """This process's own peak RSS in MB.

    Linux's ``ru_maxrss`` survives ``execve`` and a child started by ``subprocess`` inherits the parent's
    high-water mark through it, so it would report at least the parent's peak; ``VmHWM`` belongs to the
    process's own address space.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_memory_bytes_per_param(experts: int) -> int:
    """Peak of ``child_in_memory_ties`` per parameter of one model: base in bf16 and fp32 (6 bytes), and per
    expert its stacked task vector, magnitude, ``kthvalue``'s copy (4 + 4 + 4) and int64 indices (8), plus slack."""
    return 10 + 20 * experts


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (a large number where it cannot be read)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def run_child(args: list[str], timeout: float | None = None) -> dict | None:
    """Run this script in child mode; its JSON result with wall time and peak RSS (None: it ran past ``timeout``)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=540e6, help="parameters per model (default 540e6)")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["linear", "task_arithmetic", "ties", "dare_ties", "della", "model_stock"],
        help="methods to run (default: the six UQ-Merge baselines; `all`: every registered method)",
    )
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs here (default: a temp dir)")
    parser.add_argument("--in-memory-baseline", action="store_true", help="also run the whole-model TIES baseline")
    parser.add_argument(
        "--max-block-bytes", type=float, default=None, help="engine working-set bound per tensor (default: engine's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads in every run")
    parser.add_argument("--timeout", type=float, default=None, help="stop a method's run after this many seconds")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, payload = args.child[0], json.loads(args.child[1])
        threads = payload.pop("threads", None)
        if threads:
            import torch

            torch.set_num_threads(threads)
        result = {"read": child_read, "merge": child_merge, "in_memory_ties": child_in_memory_ties}[kind](**payload)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = peak_rss_mb()
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
        print(json.dumps(result))
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="uqmerge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, experts = build_inputs(root, args.params, args.experts)
    from uqmerge.checkpoint.reader import CheckpointReader

    reader = CheckpointReader(base)
    n_params = sum(math.prod(i.shape) for i in reader.tensors.values())
    input_gb = reader.total_bytes() * (1 + args.experts) / 1e9
    print(
        f"inputs: base + {args.experts} experts, {n_params / 1e6:.0f}M params each (bf16), "
        f"{input_gb:.2f} GB in all; built/reused in {time.perf_counter() - t0:.1f}s under {root}"
    )
    payload = {"base": str(base), "experts": [str(e) for e in experts], "threads": args.threads}
    print(
        f"\nthreads: {args.threads or 'default'}; "
        "GB read includes the re-read part (statistics passes over large tensors)"
    )
    header = f"{'run':28s} {'wall s':>8s} {'cpu s':>8s} {'GB/s in':>8s} {'peak RSS MB':>12s} {'GB read':>8s}"
    print(f"{header} {'re-read':>8s} {'blocked':>8s}", flush=True)

    def report(name: str, r: dict | None) -> None:
        """One row, printed as soon as its run ends (long runs do not hide the others)."""
        if r is None:
            print(f"{name:28s} stopped after --timeout {args.timeout:.0f} s", flush=True)
            return
        if "error" in r:
            print(f"{name:28s} failed: {r['error'][:160]}", flush=True)
            return
        reread = f"{r['bytes_reread'] / 1e9:.2f}" if "bytes_reread" in r else "-"
        blocked = str(r["blocked"]) if "blocked" in r else "-"
        print(
            f"{name:28s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {input_gb / r['wall_s']:8.2f} {r['peak_rss_mb']:12.0f} "
            f"{r['bytes_read'] / 1e9:8.2f} {reread:>8s} {blocked:>8s}",
            flush=True,
        )

    report("read (baseline)", run_child(["read", json.dumps(payload)]))
    if args.methods == ["all"]:
        from uqmerge.methods import method_names

        args.methods = list(method_names())
    for method in args.methods:
        params = {"density": args.density} if method in {"ties", "dare_ties", "dare_linear", "della"} else {}
        if method == "della":
            params["epsilon"] = min(0.1, args.density / 2)
        block = None if args.max_block_bytes is None else int(args.max_block_bytes)
        job = {**payload, "method": method, "out": str(root / f"out-{method}"), "params": params}
        job["max_block_bytes"] = block
        report(method, run_child(["merge", json.dumps(job)], args.timeout))
    if args.in_memory_baseline:
        need = in_memory_bytes_per_param(args.experts) * n_params
        if need > available_memory_bytes():
            print(
                f"skipping in_memory_ties: it needs about {need / 1e9:.0f} GB, more than the "
                f"{available_memory_bytes() / 1e9:.0f} GB available; run it with a smaller --params and scale"
            )
        else:
            job = {**payload, "out": str(root / "out-in-memory-ties"), "density": args.density}
            report("in_memory_ties (baseline)", run_child(["in_memory_ties", json.dumps(job)], args.timeout))


if __name__ == "__main__":
    main()
