"""Parity with mergekit 0.1.5: the same mergekit YAMLs run by ``mergekit-yaml`` and ``uqmerge merge --compat mergekit``.

Builds a tiny fp32 Llama (``LlamaForCausalLM``, 2 layers, hidden 16) as the base and 3 experts = base + random
task vectors: a shared direction plus each expert's own noise (so signs conflict entry by entry), and, in every
``mlp.down_proj`` and ``self_attn.o_proj``, a third task vector pointing against the first (mean pairwise cosine
about −0.24, so Model Stock extrapolates, t ≈ −1.3). Each YAML below is merged by mergekit's own command in its
own virtual environment and by uqmerge; every tensor is compared (max |Δ|) and a table printed.

mergekit is not a dependency of uqmerge: ``--mergekit-venv`` names a virtual environment with ``mergekit-yaml``
(``--create-venv`` makes it: ``python3.11 -m venv DIR && DIR/bin/pip install torch mergekit==0.1.5``).
Example: .venv/bin/python benchmarks/mergekit_parity.py --mergekit-venv /tmp/mk --workdir /tmp/mk-parity
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import uqmerge

TOLERANCE = 1e-6
NEGATIVE = ("mlp.down_proj", "self_attn.o_proj")
"""Tensors whose third task vector points against the first (negative mean pairwise cosine)."""

E0, E1, E2 = "expert0", "expert1", "expert2"
CASES: dict[str, dict] = {
    "linear": {
        "merge_method": "linear",
        "models": [
            {"model": E0, "parameters": {"weight": 1.0}},
            {"model": E1, "parameters": {"weight": 2.0}},
            {"model": E2, "parameters": {"weight": 0.5}},
        ],
    },
    "linear, normalize false, base averaged": {
        "merge_method": "linear",
        "base_model": "base",
        "parameters": {"weight": 0.25, "normalize": False},
        "models": [{"model": E0}, {"model": E1, "parameters": {"weight": 0.5}}],
    },
    "task_arithmetic, lambda 0.8": {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "parameters": {"lambda": 0.8},
        "models": [
            {"model": E0, "parameters": {"weight": 1.0}},
            {"model": E1, "parameters": {"weight": 0.6}},
            {"model": E2, "parameters": {"weight": -0.3}},
        ],
    },
    "task_arithmetic, normalize true": {
        "merge_method": "task_arithmetic",
        "base_model": "base",
        "parameters": {"normalize": True, "weight": 0.7},
        "models": [{"model": E0}, {"model": E1}, {"model": E2, "parameters": {"weight": 0.2}}],
    },
    "ties, density 0.3": {
        "merge_method": "ties",
        "base_model": "base",
        "parameters": {"density": 0.3, "int8_mask": True},
        "models": [
            {"model": "base"},
            {"model": E0, "parameters": {"weight": 1.0}},
            {"model": E1, "parameters": {"weight": 0.7}},
            {"model": E2, "parameters": {"weight": 0.5}},
        ],
    },
    "ties, density 0.3, normalize false": {
        "merge_method": "ties",
        "base_model": "base",
        "parameters": {"density": 0.3, "normalize": False, "weight": 0.6},
        "models": [{"model": E0}, {"model": E1}, {"model": E2, "parameters": {"density": 0.5}}],
    },
    "ties, density 0.3, rescale, lambda 1.5": {
        "merge_method": "ties",
        "base_model": "base",
        "parameters": {"density": 0.3, "rescale": True, "lambda": 1.5, "weight": 1.0},
        "models": [{"model": E0}, {"model": E1}, {"model": E2}],
    },
    "breadcrumbs, density 0.5, gamma 0.1": {
        "merge_method": "breadcrumbs",
        "base_model": "base",
        "parameters": {"density": 0.5, "gamma": 0.1, "weight": 1.0},
        "models": [{"model": E0}, {"model": E1}, {"model": E2, "parameters": {"gamma": 0.05}}],
    },
    "model_stock": {
        "merge_method": "model_stock",
        "base_model": "base",
        "models": [{"model": E0}, {"model": E1}, {"model": E2}],
    },
    "model_stock, filter_wise": {
        "merge_method": "model_stock",
        "base_model": "base",
        "parameters": {"filter_wise": True},
        "models": [{"model": E0}, {"model": E1}, {"model": E2}],
    },
    "slerp, t 0.3": {
        "merge_method": "slerp",
        "base_model": "base",
        "parameters": {"t": 0.3},
        "models": [{"model": "base"}, {"model": E1}],
    },
    "slerp, t 0 (the base)": {
        "merge_method": "slerp",
        "base_model": E0,
        "parameters": {"t": 0.0},
        "models": [{"model": E1}],
    },
}


def build_models(root: Path, seed: int = 0) -> None:
    """The tiny Llama base and its three experts under ``root`` (base/, expert0/ … expert2/)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    base = LlamaForCausalLM(config).float()
    base.save_pretrained(root / "base")
    state = base.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    taus: list[dict[str, torch.Tensor]] = [{}, {}, {}]
    for name, weight in state.items():
        shared = 0.01 * torch.randn(weight.shape, generator=g)
        own = [0.01 * torch.randn(weight.shape, generator=g) for _ in range(3)]
        for i in range(3):
            taus[i][name] = 0.5 * shared + own[i]  # conflicting signs wherever the own noise outweighs the shared
        if any(part in name for part in NEGATIVE):
            taus[2][name] = -0.5 * taus[0][name] + 0.5 * own[2]
    for i, tau in enumerate(taus):
        expert = LlamaForCausalLM(config).float()
        expert.load_state_dict({name: state[name] + tau[name] for name in state})
        expert.save_pretrained(root / f"expert{i}")


def negative_cosine_tensors(root: Path) -> tuple[int, float]:
    """How many tensors have a negative mean pairwise cosine of their task vectors, and the lowest one."""
    base = load_state(root / "base")
    experts = [load_state(root / f"expert{i}") for i in range(3)]
    lowest, count = 1.0, 0
    for name, b in base.items():
        taus = [(e[name] - b).flatten().double() for e in experts]
        cos = [float(x @ y / (x.norm() * y.norm())) for x, y in itertools.combinations(taus, 2)]
        mean = sum(cos) / len(cos)
        lowest = min(lowest, mean)
        count += mean < 0
    return count, lowest


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``path``."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def ensure_venv(venv: Path, create: bool, python: str) -> Path:
    """``mergekit-yaml`` of ``venv``; the venv is made with ``python`` first when ``create`` and it is missing."""
    script = venv / "bin" / "mergekit-yaml"
    if not script.exists():
        if not create:
            raise SystemExit(f"{script} not found; pass --create-venv or --mergekit-venv DIR with mergekit 0.1.5")
        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", torch_pin, "mergekit==0.1.5"], check=True)
    return script


def mergekit_version(venv: Path) -> str:
    """mergekit's and torch's versions inside ``venv``."""
    code = "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    mk, tv = out.stdout.split()
    return f"mergekit {mk} (torch {tv})"


def run(argv: list[str], cwd: Path, log: Path) -> float:
    """Run ``argv`` in ``cwd``, its output to ``log``; wall seconds; SystemExit naming the log on failure."""
    start = time.perf_counter()
    with log.open("w") as out:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (status {proc.returncode}); see {log}")
    return time.perf_counter() - start


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[int, float, str, list[str]]:
    """(tensors compared, max |Δ|, the tensor where it is, names only one side wrote)."""
    unmatched = sorted(set(ours) ^ set(theirs))
    worst, where = 0.0, ""
    common = sorted(set(ours) & set(theirs))
    for name in common:
        diff = float((ours[name].double() - theirs[name].double()).abs().max()) if ours[name].numel() else 0.0
        if diff > worst or not where:
            worst, where = max(worst, diff), name
    return len(common), worst, where, unmatched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mergekit-venv", type=Path, default=Path("/tmp/mk"), help="venv with mergekit-yaml")
    parser.add_argument("--create-venv", action="store_true", help="create --mergekit-venv if it is missing")
    parser.add_argument("--python", default="python3.11", help="interpreter for --create-venv")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergekit-parity"))
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="subset of the cases (names as printed)")
    args = parser.parse_args()
    mergekit_yaml = ensure_venv(args.mergekit_venv, args.create_venv, args.python)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "base" / "config.json").exists():
        build_models(work)
    negatives, lowest = negative_cosine_tensors(work)
    print(
        f"# {datetime.date.today()}: {mergekit_version(args.mergekit_venv)} vs uqmerge "
        f"{uqmerge.__version__} (torch {torch.__version__}); tiny fp32 Llama, 3 experts; "
        f"{negatives} tensors with a negative mean pairwise task-vector cosine (lowest {lowest:.3f})\n"
    )
    print("| case | tensors | max abs diff | where | ≤ 1e-6 | mergekit s | uqmerge s |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for i, case in enumerate(args.cases):
        config = work / f"case{i}.yml"
        config.write_text(yaml.safe_dump(CASES[case], sort_keys=False))
        theirs_dir, ours_dir = work / f"case{i}-mergekit", work / f"case{i}-uqmerge"
        shutil.rmtree(theirs_dir, ignore_errors=True)
        their_s = run(
            [str(mergekit_yaml), config.name, theirs_dir.name, "--no-write-model-card"],
            work,
            work / f"case{i}-mergekit.log",
        )
        our_s = run(
            [sys.executable, "-m", "uqmerge", "merge", config.name, ours_dir.name, "--compat", "mergekit", "--force"],
            work,
            work / f"case{i}-uqmerge.log",
        )
        count, worst, where, unmatched = compare(load_state(ours_dir), load_state(theirs_dir))
        ok = worst <= TOLERANCE and not unmatched
        failed |= not ok
        note = f" (unmatched: {unmatched[:3]})" if unmatched else ""
        verdict = "yes" if ok else "NO"
        place = f"`{where}`" if worst > 0 else "—"
        print(f"| {case} | {count} | {worst:.2e} | {place}{note} | {verdict} | {their_s:.1f} | {our_s:.1f} |")
    if failed:
        raise SystemExit("some cases differ by more than 1e-6")


if __name__ == "__main__":
    main()
