"""UQ entry points: score a loaded model on prepared datasets, or a model directory with caching.

Per item and pass ``j`` every draw is keyed by (UQ seed, dataset name, item id, ``j``): the image goes
through AugMix (modes vl/input/image), a system message is drawn (vl/input/text), and the pass runs with
MC dropout in the LM attention (vl/model), its masks drawn per batch row and layer
(:mod:`.perturb`). Mode ``none`` and ``cp`` run one unperturbed pass. Passes are grouped for the forward
passes by token length: sorted by (length, item, pass) and cut into groups of at most ``batch_size``
passes of one length, so no row is padded (:func:`forward_groups`). With the images encoded one at a
time and the output head run row by row (:mod:`.scoring`), a pass's probabilities, and so every score,
are bit-identical on the CPU whatever the batch size and whatever the order of the data's items (they are
scored and reported in canonical order, :func:`~uqmerge.uq.data.canonical_order`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from uqmerge.core.devices import dtype_name, resolve_device, resolve_dtype
from uqmerge.core.errors import DataError, UQMergeError
from uqmerge.core.prompts import LETTERS, build_messages, format_user_text, render_prompt
from uqmerge.core.seeds import stable_seed
from uqmerge.uq import measures
from uqmerge.uq.cache import UQCache, cache_key, fingerprint_model_dir
from uqmerge.uq.config import UQConfig, UQMode
from uqmerge.uq.conformal import conformal_prediction
from uqmerge.uq.data import DataSpec, UnreadableImageError, UQDataset, UQItem, canonical_order, load_uq_datasets
from uqmerge.uq.perturb import augmix_image, draw_system_message, inference_mode
from uqmerge.uq.prompts import resolve_option_token_ids
from uqmerge.uq.results import (
    ConformalReport,
    DatasetResult,
    ItemResult,
    SkippedItem,
    UQResult,
)
from uqmerge.uq.scoring import ForwardRequest, letter_probabilities, model_device_dtype, prompt_lengths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassPlan:
    """One (item, pass ``j``) forward pass before its image is drawn: its prompt and the prompt's token length."""

    item_index: int
    j: int
    system: str | None
    prompt: str
    length: int


def pass_system_messages(item: UQItem, dataset: str, config: UQConfig) -> list[str | None]:
    """The system message of each of the item's ``config.passes`` passes (None: the template's default)."""
    if not config.mode.perturbs_text:
        return [None] * config.passes
    return [draw_system_message(stable_seed(config.seed, "text", dataset, item.id, j)) for j in range(config.passes)]


def pass_request(
    item: UQItem, image: Image.Image, j: int, prompt: str, dataset: str, config: UQConfig, letter_ids: tuple[int, ...]
) -> ForwardRequest:
    """Pass ``j`` of ``item``: its (AugMix-perturbed) image, its prompt and the seed parts of its dropout masks."""
    mode = config.mode
    if mode.perturbs_image:
        image = augmix_image(image, stable_seed(config.seed, "image", dataset, item.id, j))
    key = (config.seed, "dropout", dataset, item.id, j) if mode.perturbs_model else None
    return ForwardRequest(prompt, image, letter_ids[: len(item.options)], key)


def item_prompts(item: UQItem, systems: Sequence[str | None], processor: Any) -> dict[str | None, str]:
    """The rendered prompt of each distinct system message in ``systems``."""
    user_text = format_user_text(item.question, item.options, item.hint)
    return {system: render_prompt(processor, build_messages(user_text, system)) for system in dict.fromkeys(systems)}


def plan_item(
    index: int, item: UQItem, image: Image.Image, dataset: str, config: UQConfig, processor: Any
) -> list[PassPlan]:
    """The item's passes with their prompts' token lengths (AugMix keeps the image size, so the length too)."""
    systems = pass_system_messages(item, dataset, config)
    prompts = item_prompts(item, systems, processor)
    lengths = dict(zip(prompts, prompt_lengths(processor, list(prompts.values()), image), strict=True))
    return [PassPlan(index, j, system, prompts[system], lengths[system]) for j, system in enumerate(systems)]


def forward_groups(plans: Sequence[PassPlan], batch_size: int) -> list[list[PassPlan]]:
    """``plans`` sorted by (token length, item, pass) and cut into groups of at most ``batch_size`` passes of
    one token length: no row of a forward pass is padded."""
    ordered = sorted(plans, key=lambda p: (p.length, p.item_index, p.j))
    groups: list[list[PassPlan]] = []
    for _, same_length in itertools.groupby(ordered, key=lambda p: p.length):
        run = list(same_length)
        groups.extend(run[start : start + batch_size] for start in range(0, len(run), batch_size))
    return groups


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("passes"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def group_requests(
    group: Sequence[PassPlan], items: Sequence[UQItem], dataset: str, config: UQConfig, letter_ids: tuple[int, ...]
) -> list[ForwardRequest]:
    """The forward requests of one group of passes (each item's image decoded once per group)."""
    images: dict[int, Image.Image] = {}
    requests = []
    for plan in group:
        item = items[plan.item_index]
        if plan.item_index not in images:
            images[plan.item_index] = item.image.load()
        requests.append(pass_request(item, images[plan.item_index], plan.j, plan.prompt, dataset, config, letter_ids))
    return requests


def plan_dataset(
    dataset: UQDataset, items: Sequence[UQItem], config: UQConfig, processor: Any
) -> tuple[list[PassPlan], list[SkippedItem]]:
    """Every pass of ``items`` (the dataset's, in canonical order), and the items whose image cannot be read."""
    plans: list[PassPlan] = []
    skipped: list[SkippedItem] = []
    for index, item in enumerate(items):
        try:
            image = item.image.load()
        except UnreadableImageError as e:
            skipped.append(SkippedItem(id=item.id, reason=str(e)))
            logger.warning("%s: skipping item %r: %s", dataset.name, item.id, e)
            continue
        plans.extend(plan_item(index, item, image, dataset.name, config, processor))
    return plans, skipped


def _score_dataset(
    model: nn.Module,
    processor: Any,
    dataset: UQDataset,
    config: UQConfig,
    letter_ids: tuple[int, ...],
    progress: Progress,
) -> DatasetResult:
    items = canonical_order(dataset.items)
    plans, skipped = plan_dataset(dataset, items, config, processor)
    if not plans:
        raise DataError(
            f"dataset {dataset.name!r} ({dataset.spec}): every item was skipped "
            f"(first reason: {skipped[0].reason if skipped else 'none'})"
        )
    task = progress.add_task(f"UQ {dataset.name}", total=len(plans))
    probs: dict[int, dict[int, Tensor]] = {p.item_index: {} for p in plans}
    for group in forward_groups(plans, config.batch_size):
        requests = group_requests(group, items, dataset.name, config, letter_ids)
        for plan, row in zip(group, letter_probabilities(model, processor, requests), strict=True):
            probs[plan.item_index][plan.j] = row
        progress.advance(task, len(group))
    progress.remove_task(task)
    systems: dict[int, list[str | None]] = {p.item_index: [] for p in plans}
    for plan in plans:
        systems[plan.item_index].append(plan.system)
    rows = {index: [by_pass[j] for j in sorted(by_pass)] for index, by_pass in sorted(probs.items())}
    return _dataset_result(dataset, items, config, rows, systems, skipped)


def _dataset_result(
    dataset: UQDataset,
    items_in_order: Sequence[UQItem],
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
        item = items_in_order[index]
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
    """Datasets as given, or prepared items wrapped into one dataset named ``items`` (in canonical order)."""
    if isinstance(data, UQDataset):
        return [data]
    data = list(data)
    if data and all(isinstance(d, UQItem) for d in data):
        return [
            UQDataset(
                name="items",
                spec="<in-memory items>",
                items=tuple(canonical_order(data)),
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
        dtype=dtype_name(dtype),
        datasets=results,
    )


def saved_dtype(model_dir: Path) -> str | None:
    """The dtype ``config.json`` of ``model_dir`` records (``dtype``, or the older ``torch_dtype``), if any."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    saved = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return saved if isinstance(saved, str) else None


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
        "dtype": dtype_name(dtype),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "uqmerge": __version__,
    }


@dataclass(frozen=True)
class UQRequest:
    """One model's UQ before it is computed: the directory, the device and dtype it is scored on, and the
    fingerprint and cache key of the numbers (a worker process needs nothing else to compute them)."""

    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    key: str


def prepare_datasets(data_specs: Sequence[str | DataSpec] | Sequence[UQDataset], config: UQConfig) -> list[UQDataset]:
    """Prepared datasets as given, or ``data_specs`` loaded, sampled and padded as ``config`` says."""
    if data_specs and all(isinstance(d, UQDataset) for d in data_specs):
        return list(data_specs)  # type: ignore[arg-type]
    return load_uq_datasets(
        data_specs, seed=config.seed, sample_ratio=config.sample_ratio, real_options=config.real_options
    )


def uq_request(
    model_dir: str | Path,
    datasets: Sequence[UQDataset],
    config: UQConfig,
    *,
    device: torch.device,
    dtype: str = "auto",
    cache: UQCache,
    use_cache: bool = True,
) -> UQRequest:
    """Resolve the dtype (``auto``: see :func:`run_uq`), fingerprint the model directory and key its result."""
    model_dir = Path(model_dir)
    resolved_dtype = resolve_dtype(dtype, device, saved_dtype(model_dir))
    fingerprint = fingerprint_model_dir(model_dir, cache_dir=cache.root if use_cache else None)
    key = cache_key(
        model_fingerprint=fingerprint,
        datasets=[d.identity() for d in datasets],
        config=config.numbers_key(),
        environment=_environment(device, resolved_dtype),
    )
    return UQRequest(model_dir, device, resolved_dtype, fingerprint, key)


def cached_uq(request: UQRequest, datasets: Sequence[UQDataset], config: UQConfig, cache: UQCache) -> UQResult | None:
    """The cached result of ``request`` labelled for this call (model path, config, data specs), or None."""
    result = cache.load(request.key)
    if result is None:
        logger.info("UQ cache miss for %s (key %s)", request.model_dir, request.key[:16])
        return None
    logger.info("UQ cache hit for %s (%s)", request.model_dir, cache.path_for(request.key))
    specs = [d.model_copy(update={"spec": ds.spec}) for d, ds in zip(result.datasets, datasets, strict=True)]
    result = result.model_copy(update={"model": str(request.model_dir), "config": config, "datasets": specs})
    result._cache_hit = True
    return result


def compute_uq(
    request: UQRequest, datasets: Sequence[UQDataset], config: UQConfig, *, progress: bool = False
) -> UQResult:
    """Load the model of ``request`` and score it (no cache): what :func:`run_uq` does on a cache miss."""
    model, processor = load_model(request.model_dir, device=request.device, dtype=request.dtype)
    return uncertainty_of_loaded_model(
        model,
        processor,
        datasets,
        config,
        model_name=str(request.model_dir),
        model_fingerprint=request.fingerprint,
        progress=progress,
    )


def store_uq(request: UQRequest, result: UQResult, cache: UQCache) -> None:
    """Cache a computed result; a cache that cannot be written is a warning, not a failure."""
    try:
        cache.store(request.key, result)
    except OSError as e:
        logger.warning("cannot write the UQ cache in %s: %s", cache.root, e)


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

    ``device`` and ``dtype`` follow :func:`uqmerge.core.devices.resolve_device` and ``resolve_dtype`` (``auto``
    on CUDA: the dtype ``config.json`` records). The result is cached under a key of the model fingerprint,
    each prepared dataset's name, item count and content digest (:meth:`UQDataset.identity`), ``config``
    (without ``batch_size`` and ``save_probs``, which do not change the numbers), device type, dtype and
    library versions; a rerun is a cache hit (logged, ``result.cache_hit``) and returns identical JSON.
    Without ``config.save_probs`` the per-item records are dropped from the returned result (the cache
    keeps them). The steps (:func:`uq_request`, :func:`cached_uq`, :func:`compute_uq`, :func:`store_uq`) are
    public so that an execution backend can compute a cache miss in another process.
    """
    config = config or UQConfig()
    resolved_device = resolve_device(device)
    datasets = prepare_datasets(data_specs, config)
    cache = UQCache(cache_dir)
    request = uq_request(
        model_dir, datasets, config, device=resolved_device, dtype=dtype, cache=cache, use_cache=use_cache
    )
    result = cached_uq(request, datasets, config, cache) if use_cache else None
    if result is None:
        result = compute_uq(request, datasets, config, progress=progress)
        if use_cache:
            store_uq(request, result, cache)
    return result if config.save_probs else result.without_probs()
