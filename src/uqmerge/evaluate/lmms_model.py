"""uqmerge's lmms-eval model: an MLLM directory uqmerge reads (or a model in memory), prompted by its chat template.

lmms-eval finds it by the name ``uqmerge`` (:mod:`uqmerge.evaluate.lmms_plugin`). A request's context (the task's
``doc_to_text``) becomes the user turn after the request's images, rendered by the model's chat template with the
generation prompt, exactly as ``uqmerge eval`` prompts an open-ended question
(:func:`uqmerge.evaluate.open_ended.encode_prompts`). Generation is greedy and batched with left padding
(:func:`~uqmerge.evaluate.open_ended.generate_from_inputs`); a response is cut at the task's first ``until``
string. ``loglikelihood`` (``output_type: multiple_choice`` tasks) gives a continuation's loss after that prompt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image

from uqmerge.core.errors import ConfigError, DataError, UQMergeError
from uqmerge.core.prompts import build_messages, render_prompt
from uqmerge.evaluate.open_ended import encode_prompts, generate_from_inputs

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128
"""Generation length for a task that sets no ``max_new_tokens`` (lmms-eval's tasks usually set one)."""


def _batch_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a positive integer, got {value!r}") from None
    if size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {value!r}")
    return size


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any non-empty stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


def _stop_strings(gen_kwargs: dict[str, Any], task: str) -> list[str]:
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, list | tuple):
        raise DataError(f"lmms-eval task {task!r}: generation_kwargs.until must be a string or a list, got {until!r}")
    return [str(u) for u in until]


class UQMergeLMM(lmms):
    """An lmms-eval ``simple`` model over a Hugging Face MLLM (``pretrained=DIR``) or a loaded one (``model=``).

    ``model_args`` on lmms-eval's command line: ``pretrained`` (a model directory), ``device`` (``cpu``, ``cuda``
    or ``auto``), ``dtype`` (``auto``, ``float32``, ``bfloat16``, ``float16``), ``batch_size``, ``max_new_tokens``
    (for tasks that set none). From Python, ``model`` and ``processor`` evaluate a model already in memory (a
    resident merge) on its own device and dtype; it is never moved, freed or left in train mode.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str = 16,
        max_batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        model: Any = None,
        processor: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown model_args {sorted(unknown)} for lmms-eval model 'uqmerge'; it takes pretrained, device, "
                "dtype, batch_size and max_new_tokens"
            )
        del max_batch_size  # lmms-eval passes it to every model; batches here have a fixed size
        self.batch_size = _batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if model is not None:
            if processor is None:
                raise ConfigError("UQMergeLMM(model=...) needs the model's processor too")
            self.model, self.processor = model, processor
        elif pretrained is not None:
            from uqmerge.core.devices import resolve_device, resolve_dtype
            from uqmerge.uq.api import load_model, saved_dtype

            path = Path(pretrained)
            dev = resolve_device(device or "auto")
            self.model, self.processor = load_model(
                path, device=dev, dtype=resolve_dtype(dtype, dev, saved_dtype(path))
            )
        else:
            raise ConfigError("lmms-eval model 'uqmerge' needs model_args pretrained=MODEL_DIR")
        self._warned_sampling = False

    # ---- inputs ---------------------------------------------------------------------------------------
    def _images(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Image.Image]:
        """The request's images (RGB), in the order the task gives them."""
        if doc_to_visual is None:
            return []
        try:
            doc = self.task_dict[task][split][doc_id]
        except (KeyError, IndexError) as e:
            raise DataError(f"lmms-eval task {task!r}: no document {doc_id} in split {split!r}") from e
        visuals = doc_to_visual(doc)
        if visuals is None:
            return []
        if not isinstance(visuals, list | tuple):
            visuals = [visuals]
        flat: list[Any] = []
        for v in visuals:
            flat.extend(v if isinstance(v, list | tuple) else [v])
        images = []
        for v in flat:
            if not isinstance(v, Image.Image):
                raise DataError(
                    f"lmms-eval task {task!r} doc {doc_id}: uqmerge's model reads images only, got "
                    f"{type(v).__name__} (video and audio tasks need another lmms-eval model)"
                )
            images.append(v.convert("RGB"))
        return images

    # ---- lmms-eval's request types ---------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy responses, batched by generation settings in request order."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1] or {}, sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        out: list[str] = [""] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            with _progress(len(requests), "lmms-eval generate") as advance:
                for indices in groups.values():
                    first = requests[indices[0]].args
                    gen_kwargs, task = dict(first[1] or {}), first[4]
                    until = _stop_strings(gen_kwargs, task)
                    max_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
                    self._check_greedy(gen_kwargs, task)
                    for start in range(0, len(indices), self.batch_size):
                        chunk = indices[start : start + self.batch_size]
                        args = [requests[i].args for i in chunk]
                        images = [self._images(a[2], a[3], a[4], a[5]) for a in args]
                        batch = encode_prompts(self.processor, images, [a[0] for a in args])
                        answers = generate_from_inputs(self.model, self.processor, batch, max_new_tokens=max_new)
                        for i, text in zip(chunk, answers, strict=True):
                            out[i] = cut_at_stop(text, until)
                        advance(len(chunk))
        finally:
            self.model.train(was_training)
        return out

    def _check_greedy(self, gen_kwargs: dict[str, Any], task: str) -> None:
        sampling = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature") or 0) > 0
        if sampling and not self._warned_sampling:
            log.warning("lmms-eval task %r asks for sampling; uqmerge's model generates greedily", task)
            self._warned_sampling = True

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """The negative log-likelihood of each continuation after the request's prompt, and whether greedy decoding
        gives it.

        lmms-eval's models return the continuation's loss, and its ``multiple_choice`` scoring takes the choice of
        lowest value (``argmin``; lmms-eval issue #370), so the sign is lmms-eval's, not lm-eval-harness's. Each
        ``(loss, is_greedy)`` pair is wrapped in lmms-eval's ``GenerationResult``: lmms-eval 0.7.3's
        evaluator turns a bare tuple into its string (``unwrap_generation_output``), which its
        ``multiple_choice`` scoring cannot unpack, and passes a ``GenerationResult``'s payload through unchanged.
        """
        out: list[GenerationResult] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with _progress(len(requests), "lmms-eval loglikelihood") as advance:
                for request in requests:
                    context, continuation, doc_to_visual, doc_id, task, split = request.args
                    images = self._images(doc_to_visual, doc_id, task, split)
                    pair = self._continuation_loss(str(context), str(continuation), images)
                    out.append(GenerationResult(text=pair))  # type: ignore[arg-type]
                    advance(1)
        finally:
            self.model.train(was_training)
        return out

    def _continuation_loss(self, context: str, continuation: str, images: list[Image.Image]) -> tuple[float, bool]:
        prompt = render_prompt(self.processor, build_messages(context, images=len(images)))
        kwargs = {"images": images or None, "return_tensors": "pt"}
        prompt_ids = self.processor(text=[prompt], **kwargs)["input_ids"][0]
        full = dict(self.processor(text=[prompt + continuation], **kwargs))
        ids = full["input_ids"][0]
        # A tokenizer may merge the last prompt token with the continuation's first: score from where they part.
        common = 0
        for a, b in zip(prompt_ids.tolist(), ids.tolist(), strict=False):
            if a != b:
                break
            common += 1
        start = max(1, common)
        if start >= len(ids):
            raise DataError(f"continuation {continuation!r} adds no tokens to its prompt")
        param = next(self.model.parameters())
        inputs = {
            k: (v.to(device=param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device))
            for k, v in full.items()
            if isinstance(v, torch.Tensor)
        }
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        logprobs = torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)
        targets = ids[start:].to(logprobs.device)
        loss = -float(logprobs.gather(-1, targets.unsqueeze(-1)).sum())
        greedy = bool((logprobs.argmax(dim=-1) == targets).all())
        return loss, greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        task = requests[0].args[5] if requests else "?"
        raise UQMergeError(
            f"lmms-eval task {task!r} is multi-round; uqmerge's model answers single-turn tasks "
            "(generate_until, multiple_choice)"
        )

    def clean(self) -> None:
        # lmms-eval deletes a model's nn.Module attributes after its requests (to make room for a judge model).
        # A resident merge is evaluated again after its next merge, so the model is kept; only CUDA's cache goes.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _progress:
    """A rich progress bar on stderr over ``total`` requests; ``advance(n)`` moves it."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        quiet = logging.getLogger("uqmerge").getEffectiveLevel() > logging.INFO
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=quiet,
            transient=True,
        )
        self.total = total
        self.description = description

    def __enter__(self) -> Any:
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)  # type: ignore[arg-type]
