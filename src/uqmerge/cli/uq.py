"""``uqmerge uq``: label-free vision-language uncertainty of one model (needs the ``uq`` extra)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from uqmerge.cli.common import Ray, quiet_transformers, require_extra
from uqmerge.core.errors import ConfigError
from uqmerge.uq.config import UQMode

if TYPE_CHECKING:
    from rich.table import Table

    from uqmerge.uq.config import UQConfig
    from uqmerge.uq.results import UQResult

logger = logging.getLogger(__name__)

DATA_HELP = (
    "UQ data, repeatable: a JSONL file (one item a line: id, image path relative to the file, question, "
    "options, optional hint and answer as option text or letter), or ADAPTER:SOURCE[@CONFIG][:SPLIT] "
    "with ADAPTER one of mmbench, scienceqa, seedbench, ai2d, oodcv and SOURCE a local file/directory "
    "or a hub id (e.g. mmbench:lmms-lab/MMBench@en:dev)."
)


def summary_table(result: UQResult) -> Table:
    """One row per dataset and a model row: uncertainty, accuracy, items scored and skipped."""
    from rich.table import Table

    measure = "MI (nats)" if result.measure == "mutual_information" else "CP set size"
    table = Table(
        "dataset", measure, "accuracy", "scored", "skipped", title=f"UQ of {result.model} ({result.config.mode})"
    )
    for d in result.datasets:
        acc = "-" if d.accuracy is None else f"{d.accuracy:.4f}"
        table.add_row(d.name, f"{d.uncertainty:.6g}", acc, str(d.n_scored), str(d.n_skipped))
    acc = "-" if result.accuracy is None else f"{result.accuracy:.4f}"
    table.add_row("[bold]model score[/]", f"[bold]{result.score:.6g}[/]", acc, "", "")
    return table


def write_result(result: UQResult, out: Path) -> None:
    """Write the result JSON to ``out`` (parents created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.to_json() + "\n", encoding="utf-8")


def uq_command(
    model_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL_DIR...",
            help="Hugging Face model directories (model + processor with chat template); several are scored one "
            "after another, or in parallel with --ray.",
        ),
    ],
    data: Annotated[list[str], typer.Option("--data", "-d", help=DATA_HELP)],
    mode: Annotated[
        UQMode,
        typer.Option(
            help="vl: image+text+model perturbations (default); input: image+text; image; text; model; "
            "none (one unperturbed pass, MI = 0); cp: conformal prediction with labels (mean set size)."
        ),
    ] = UQMode.VL,
    perturbations: Annotated[
        int, typer.Option("--perturbations", "-J", min=1, max=64, help="Perturbed passes per item (J).")
    ] = 4,
    seed: Annotated[int, typer.Option(min=0, help="Seed of sampling, padding, perturbations, CP split.")] = 0,
    sample_ratio: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of each dataset to use (seeded).")
    ] = 1.0,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Prompts per forward pass (speed and memory only; scores do not depend on it).")
    ] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (CUDA when available).")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (float32 on CPU, the checkpoint's dtype on CUDA), float32, bfloat16, float16.")
    ] = "auto",
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="MC-dropout p on LM attention probabilities (modes vl, model).")
    ] = 0.1,
    alpha: Annotated[float, typer.Option(help="Conformal error rate (mode cp).")] = 0.1,
    calibration_ratio: Annotated[float, typer.Option(help="Calibration share of each dataset (mode cp).")] = 0.5,
    out: Annotated[Path | None, typer.Option(help="Write the result JSON here (default: stdout).")] = None,
    save_probs: Annotated[
        bool, typer.Option("--save-probs", help="Include each item's J option-probability vectors.")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="UQ cache directory (default $UQMERGE_CACHE or ~/.cache/uqmerge/uq).")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the UQ cache.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")] = False,
    ray: Ray = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray workers (default: as many as the cluster's CPUs or GPUs fit).")
    ] = None,
) -> None:
    """Label-free vision-language uncertainty of each MODEL_DIR on multiple-choice data (UQ-Merge, Eq. 1)."""
    # Bad input raises UQMergeError (DataError, ConfigError); the app reports it without a traceback.
    require_extra("uq", "uq")
    if ray is not None:
        require_extra("uq", "ray", feature="--ray")
    elif workers is not None:
        raise ConfigError("--workers sets the number of Ray workers; add --ray local (or a cluster's address)")
    from pydantic import ValidationError
    from rich.console import Console

    from uqmerge.uq.api import run_uq
    from uqmerge.uq.config import UQConfig

    quiet_transformers()
    try:
        config = UQConfig(
            mode=mode,
            perturbations=perturbations,
            seed=seed,
            sample_ratio=sample_ratio,
            batch_size=batch_size,
            dropout=dropout,
            alpha=alpha,
            calibration_ratio=calibration_ratio,
            save_probs=save_probs,
        )
    except ValidationError as e:
        problems = "; ".join(f"--{'-'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid uq options: {problems}") from None
    outputs = output_paths(model_dirs, out)
    if len(model_dirs) == 1 and ray is None:
        result = run_uq(
            model_dirs[0],
            data,
            config,
            device=device,
            dtype=dtype,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            progress=not quiet,
        )
        results = {0: result}
    else:
        results = score_many(model_dirs, data, config, device, dtype, cache_dir, not no_cache, ray, workers, quiet)
    for index, target in outputs.items():
        if target is None:
            typer.echo(results[index].to_json())
        else:
            write_result(results[index], target)
            logger.info("wrote %s", target)
        if not quiet:
            Console(stderr=True).print(summary_table(results[index]))


def output_paths(model_dirs: list[Path], out: Path | None) -> dict[int, Path | None]:
    """Where each model's result goes: ``out`` itself for one model, ``out/<directory name>.json`` for several."""
    if len(model_dirs) == 1:
        return {0: out}
    if out is None:
        raise ConfigError(f"{len(model_dirs)} MODEL_DIRs give one result each: pass --out DIR (<name>.json per model)")
    names = [m.name for m in model_dirs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"MODEL_DIRs {repeated} share a directory name, so their --out files would collide")
    return {i: out / f"{name}.json" for i, name in enumerate(names)}


def score_many(
    model_dirs: list[Path],
    data: list[str],
    config: UQConfig,
    device: str,
    dtype: str,
    cache_dir: Path | None,
    use_cache: bool,
    ray: str | None,
    workers: int | None,
    quiet: bool,
) -> dict[int, UQResult]:
    """The UQ of every model on data prepared once, on the local backend or (with ``ray``) on Ray actors."""
    from uqmerge.pipeline.execution import ExecutionSettings, ModelJob, open_backend
    from uqmerge.uq.api import prepare_datasets

    datasets = prepare_datasets(data, config)
    settings = ExecutionSettings() if ray is None else ExecutionSettings(workers=workers).with_ray(ray)
    jobs = [
        ModelJob(m, datasets, config, device=device, dtype=dtype, cache_dir=cache_dir, use_cache=use_cache)
        for m in model_dirs
    ]
    results: dict[int, UQResult] = {}
    with open_backend(settings) as backend:
        for index, result in backend.score_models(jobs):
            results[index] = result
            if not quiet:
                logger.info(
                    "%s: %s %.6g (%d of %d)", model_dirs[index], result.measure, result.score, len(results), len(jobs)
                )
    return results
