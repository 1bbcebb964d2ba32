"""UQ entry points: score a loaded model on prepared datasets, or a model directory with caching.

Per item and pass ``j`` (seeds derived from the UQ seed, dataset name, item id and ``j``, so an
item's perturbations do not depend on sampling, order or batching): the image goes through AugMix
(modes vl/input/image), a system message is drawn (vl/input/text), and the pass runs with MC dropout
in the LM attention (vl/model; masks drawn per forward batch from a seed derived from the batch index,
which makes these modes depend on ``batch_size``). Mode ``none`` and ``cp`` run one unperturbed pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from uqmerge.core.errors import DataError, UQMergeError
from uqmerge.uq import measures
from uqmerge.uq.cache import UQCache, cache_key, fingerprint_model_dir
from uqmerge.uq.config import UQConfig, UQMode
from uqmerge.uq.conformal import conformal_prediction
from uqmerge.uq.data import DataSpec, UnreadableImageError, UQDataset, UQItem, load_uq_datasets
from uqmerge.uq.perturb import augmix_image, draw_system_message, inference_mode
from uqmerge.uq.prompts import LETTERS, build_messages, format_user_text, render_prompt, resolve_option_token_ids
from uqmerge.uq.results import (
    ConformalReport,
    DatasetResult,
    ItemResult,
    SkippedItem,
    UQResult,
)
from uqmerge.uq.scoring import ForwardRequest, letter_probabilities, model_device_dtype
from uqmerge.uq.seeding import derive_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pass:
    """One (item, pass) forward request and the index of its item."""

    item_index: int
    request: ForwardRequest


def item_requests(
    item: UQItem, image: Image.Image, dataset: str, config: UQConfig, processor: Any, letter_ids: tuple[int, ...]
) -> Iterator[tuple[str | None, ForwardRequest]]:
    """The item's ``config.passes`` forward requests, each with the system message it uses (or None)."""
    user_text = format_user_text(item.question, item.options, item.hint)
    prompts: dict[str | None, str] = {}
    mode = config.mode
    for j in range(config.passes):
        system = (
            draw_system_message(derive_seed(config.seed, "text", dataset, item.id, j)) if mode.perturbs_text else None
        )
        if system not in prompts:
            prompts[system] = render_prompt(processor, build_messages(user_text, system))
        pass_image = (
            augmix_image(image, derive_seed(config.seed, "image", dataset, item.id, j))
            if mode.perturbs_image
            else image
        )
        yield system, ForwardRequest(prompts[system], pass_image, letter_ids[: len(item.options)])


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def _score_dataset(
    model: nn.Module,
    processor: Any,
    dataset: UQDataset,
    config: UQConfig,
    letter_ids: tuple[int, ...],
    progress: Progress,
) -> DatasetResult:
    mode = config.mode
    task = progress.add_task(f"UQ {dataset.name}", total=len(dataset.items))
    skipped: list[SkippedItem] = []
    probs: dict[int, list[Tensor]] = {}
    systems: dict[int, list[str | None]] = {}
    pending: list[_Pass] = []
    batch_index = 0

    def flush() -> None:
        nonlocal batch_index
        if not pending:
            return
        seed = derive_seed(config.seed, "dropout", dataset.name, batch_index) if mode.perturbs_model else None
        out = letter_probabilities(model, processor, [p.request for p in pending], dropout_seed=seed)
        for p, row in zip(pending, out, strict=True):
            probs[p.item_index].append(row)
        progress.advance(task, len(pending) / config.passes)
        pending.clear()
        batch_index += 1

    for index, item in enumerate(dataset.items):
        try:
            image = item.image.load()
        except UnreadableImageError as e:
            skipped.append(SkippedItem(id=item.id, reason=str(e)))
            logger.warning("%s: skipping item %r: %s", dataset.name, item.id, e)
            progress.advance(task, 1)
            continue
        probs[index], systems[index] = [], []
        for system, request in item_requests(item, image, dataset.name, config, processor, letter_ids):
            systems[index].append(system)
            pending.append(_Pass(index, request))
            if len(pending) == config.batch_size:
                flush()
    flush()
    progress.remove_task(task)
    if not probs:
        raise DataError(
            f"dataset {dataset.name!r} ({dataset.spec}): every item was skipped "
            f"(first reason: {skipped[0].reason if skipped else 'none'})"
        )
    return _dataset_result(dataset, config, probs, systems, skipped)


def _dataset_result(
    dataset: UQDataset,
    config: UQConfig,
    probs: dict[int, list[Tensor]],
    systems: dict[int, list[str | None]],
    skipped: list[SkippedItem],
) -> DatasetResult:
    items: list[ItemResult] = []
    predictions: list[int] = []
    answers: list[int | None] = []
    item_probs: list[Tensor] = []
    for index, rows in probs.items():
        item = dataset.items[index]
        stacked = torch.stack(rows)
        total, expected, mi = measures.item_measures(stacked)
        prediction = int(torch.argmax(stacked.mean(dim=0)))
        predictions.append(prediction)
        answers.append(item.answer)
        item_probs.append(stacked.mean(dim=0))
        items.append(
            ItemResult(
                id=item.id,
                options=list(item.options),
                answer=None if item.answer is None else LETTERS[item.answer],
                prediction=LETTERS[prediction],
                system_messages=systems[index],
                probs=[[float(x) for x in row] for row in stacked],
                total=total,
                expected=expected,
                uncertainty=mi,
            )
        )
    labelled = [a for a in answers if a is not None]
    conformal = None
    if config.mode is UQMode.CP:
        if len(labelled) != len(answers):
            first = next(it.id for it, a in zip(items, answers, strict=True) if a is None)
            raise DataError(
                f"mode cp needs labels: dataset {dataset.name!r} has {len(answers) - len(labelled)} item(s) "
                f"without an answer (first: {first!r})"
            )
        try:
            lac, aps, n_cal, n_test = conformal_prediction(
                item_probs,
                labelled,
                alpha=config.alpha,
                calibration_ratio=config.calibration_ratio,
                seed=config.seed,
                dataset=dataset.name,
            )
        except ValueError as e:
            raise DataError(f"dataset {dataset.name!r}: {e}") from e
        conformal = ConformalReport(
            alpha=config.alpha,
            calibration_ratio=config.calibration_ratio,
            n_calibration=n_cal,
            n_test=n_test,
            lac_qhat=lac.qhat,
            lac_coverage=lac.coverage,
            lac_mean_set_size=lac.mean_set_size,
            aps_qhat=aps.qhat,
            aps_coverage=aps.coverage,
            aps_mean_set_size=aps.mean_set_size,
        )
        uncertainty = (lac.mean_set_size + aps.mean_set_size) / 2
        total = expected = None
    else:
        uncertainty = measures.mean([it.uncertainty for it in items])
        total = measures.mean([it.total for it in items])
        expected = measures.mean([it.expected for it in items])
    accuracy = measures.accuracy(predictions, answers)
    logger.info(
        "%s: uncertainty %.6g over %d item(s), %d skipped%s",
        dataset.name,
        uncertainty,
        len(items),
        len(skipped),
        "" if accuracy is None else f", accuracy {accuracy:.4f}",
    )
    return DatasetResult(
        name=dataset.name,
        spec=dataset.spec,
        fingerprint=dataset.fingerprint(),
        n_source=dataset.n_source,
        excluded=dict(dataset.excluded),
        n_loaded=dataset.n_loaded,
        n_sampled=len(dataset.items),
        n_scored=len(items),
        n_skipped=len(skipped),
        skipped=skipped,
        n_underpadded=dataset.n_underpadded,
        uncertainty=uncertainty,
        total=total,
        expected=expected,
        accuracy=accuracy,
        n_labelled=len(labelled),
        conformal=conformal,
        items=items,
    )


def _as_datasets(data: UQDataset | Sequence[UQDataset] | Sequence[UQItem]) -> list[UQDataset]:
    """Datasets as given, or prepared items wrapped into one dataset named ``items``."""
    if isinstance(data, UQDataset):
        return [data]
    data = list(data)
    if data and all(isinstance(d, UQItem) for d in data):
        return [
            UQDataset(
                name="items",
                spec="<in-memory items>",
                items=tuple(data),
                n_source=len(data),
                n_loaded=len(data),
                excluded={},
                n_underpadded=0,
            )
        ]
    return data


def _validate_datasets(datasets: Sequence[UQDataset]) -> None:
    if not datasets:
        raise DataError("no UQ datasets given")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise DataError(f"UQ dataset names must be unique, got {names}")
    for d in datasets:
        if not d.items:
            raise DataError(f"dataset {d.name!r} ({d.spec}) has no items")


def uncertainty_of_loaded_model(
    model: nn.Module,
    processor: Any,
    datasets: UQDataset | Sequence[UQDataset] | Sequence[UQItem],
    config: UQConfig,
    *,
    model_name: str = "<loaded model>",
    model_fingerprint: str | None = None,
    progress: bool = False,
) -> UQResult:
    """Score a model already in memory (on its own device and dtype) on prepared datasets; no cache.

    ``datasets`` come from :func:`~uqmerge.uq.data.load_uq_datasets` (load them once and reuse them
    across models); a plain sequence of prepared items is scored as one dataset named ``items``.
    The model's train/eval flags and attention-dropout settings are restored afterwards. The result
    always carries per-item probabilities; call ``.without_probs()`` to drop them.
    """
    datasets = _as_datasets(datasets)
    _validate_datasets(datasets)
    max_options = max(len(it.options) for d in datasets for it in d.items)
    letter_ids = resolve_option_token_ids(processor, max_options)
    device, dtype = model_device_dtype(model)
    dropout = config.dropout if config.mode.perturbs_model else 0.0
    with inference_mode(model, attention_dropout=dropout), _progress(progress) as bar:
        results = [_score_dataset(model, processor, d, config, letter_ids, bar) for d in datasets]
    accuracies = [r.accuracy for r in results if r.accuracy is not None]
    return UQResult(
        model=model_name,
        model_fingerprint=model_fingerprint,
        measure="conformal_set_size" if config.mode is UQMode.CP else "mutual_information",
        score=measures.mean([r.uncertainty for r in results]),
        accuracy=measures.mean(accuracies) if accuracies else None,
        config=config,
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        datasets=results,
    )


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise UQMergeError(f"unknown device {device!r}; use cpu, cuda or auto") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UQMergeError("device cuda requested but CUDA is not available; use --device cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise UQMergeError(f"unsupported device {device!r}; use cpu, cuda or auto")
    return resolved


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device, model_dir: Path) -> torch.dtype:
    """``auto``: float32 on CPU, the checkpoint's dtype on CUDA; else float32/bfloat16/float16."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise UQMergeError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    from transformers import AutoConfig

    saved = getattr(AutoConfig.from_pretrained(model_dir), "dtype", None)
    return saved if isinstance(saved, torch.dtype) else _DTYPES.get(str(saved), torch.float32)


def load_model(model_dir: str | Path, *, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """``AutoModelForImageTextToText`` and ``AutoProcessor`` from a local directory (no remote code)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise UQMergeError(f"cannot load model or processor from {model_dir}: {e}") from e
    return model.to(device).eval(), processor


def _environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    import torchvision
    import transformers

    from uqmerge import __version__

    return {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "uqmerge": __version__,
    }


def run_uq(
    model_dir: str | Path,
    data_specs: Sequence[str | DataSpec] | Sequence[UQDataset],
    config: UQConfig | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> UQResult:
    """UQ of the model in ``model_dir`` on ``data_specs`` (``--data`` strings or prepared datasets).

    The result is cached under a key of the model fingerprint, the data fingerprints, ``config``
    (without ``save_probs``), device type, dtype and library versions; a rerun is a cache hit (logged,
    ``result.cache_hit``) and returns identical JSON. Without ``config.save_probs`` the per-item
    records are dropped from the returned result (the cache keeps them).
    """
    config = config or UQConfig()
    model_dir = Path(model_dir)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device, model_dir)
    if data_specs and all(isinstance(d, UQDataset) for d in data_specs):
        datasets = list(data_specs)
    else:
        datasets = load_uq_datasets(
            data_specs, seed=config.seed, sample_ratio=config.sample_ratio, real_options=config.real_options
        )
    cache = UQCache(cache_dir)
    fingerprint = fingerprint_model_dir(model_dir, cache_dir=cache.root if use_cache else None)
    key = cache_key(
        model_fingerprint=fingerprint,
        data_fingerprints=[d.fingerprint() for d in datasets],
        config=config.numbers_key(),
        environment=_environment(resolved_device, resolved_dtype),
    )
    result = cache.load(key) if use_cache else None
    if result is not None:
        logger.info("UQ cache hit for %s (%s)", model_dir, cache.path_for(key))
        result = result.model_copy(update={"model": str(model_dir), "config": config})
        result._cache_hit = True
    else:
        if use_cache:
            logger.info("UQ cache miss for %s (key %s)", model_dir, key[:16])
        model, processor = load_model(model_dir, device=resolved_device, dtype=resolved_dtype)
        result = uncertainty_of_loaded_model(
            model,
            processor,
            datasets,
            config,
            model_name=str(model_dir),
            model_fingerprint=fingerprint,
            progress=progress,
        )
        if use_cache:
            try:
                cache.store(key, result)
            except OSError as e:
                logger.warning("cannot write the UQ cache in %s: %s", cache.root, e)
    return result if config.save_probs else result.without_probs()
