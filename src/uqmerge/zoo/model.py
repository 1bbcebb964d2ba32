"""Zoo models: the tiny LLaVA architecture, its word vocabulary, prompts, targets, loading and saving.

Every zoo model is a real ``LlavaForConditionalGeneration`` (Llama text model, CLIP vision tower)
with a ``LlavaProcessor`` over the case-sensitive word-level tokenizer of :mod:`uqmerge.tiny`, saved
as a Hugging Face directory that loads offline with ``from_pretrained``. The zoo's second architecture
(:mod:`uqmerge.zoo.hetero`, a ``LlavaNextForConditionalGeneration`` on the same language model) is loaded,
prompted and fed pixels by the same functions.

Prompts are rendered by the model's own chat template. The multiple-choice user text is the UQ
format of :func:`uqmerge.core.prompts.format_user_text` (question, lettered options, the answer
instruction), so the UQ scorer reads the zoo models on prompts they were trained on. The assistant
turn is the answer (a word, or the option's letter) followed by ``<|end|>``, which is what the chat
template renders for an assistant message; generation stops at ``<|end|>`` or ``</s>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from uqmerge.core.errors import CheckpointError, ConfigError
from uqmerge.core.prompts import ANSWER_INSTRUCTION, build_messages, format_user_text, render_prompt
from uqmerge.tiny import build_tiny_llava
from uqmerge.zoo.images import IMAGE_SIZE
from uqmerge.zoo.tasks import vocabulary

logger = logging.getLogger(__name__)

END_TOKEN = "<|end|>"
"""The token that closes an assistant turn in the tiny LLaVA chat template (a generation stop token)."""

MAX_NEW_TOKENS = 4
"""Default generation length: answers are one word or one letter, then ``<|end|>``."""


@dataclass(frozen=True)
class ZooArchitecture:
    """Sizes of the tiny LLaVA: Llama ``layers`` × ``hidden`` text model, CLIP ``vision_layers`` × ``vision_hidden``."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    image_size: int = IMAGE_SIZE
    patch_size: int = 8

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def zoo_words() -> list[str]:
    """Words of the zoo tokenizer: every task token (:func:`uqmerge.zoo.tasks.vocabulary`) and the UQ prompt."""
    return [*vocabulary(), ANSWER_INSTRUCTION]


def init_base_model(out_dir: str | Path, architecture: ZooArchitecture, *, seed: int) -> Path:
    """Write a randomly initialised zoo model (weights a function of ``seed``); returns ``out_dir``."""
    if architecture.image_size != IMAGE_SIZE:
        raise ConfigError(
            f"the zoo's task images are {IMAGE_SIZE}×{IMAGE_SIZE} pixels; architecture.image_size is "
            f"{architecture.image_size}. Set image_size={IMAGE_SIZE} in the preset."
        )
    return build_tiny_llava(
        out_dir,
        words=zoo_words(),
        seed=seed,
        hidden=architecture.hidden,
        layers=architecture.layers,
        heads=architecture.heads,
        vision_hidden=architecture.vision_hidden,
        vision_layers=architecture.vision_layers,
        image_size=architecture.image_size,
        patch_size=architecture.patch_size,
    )


def load_zoo_model(path: str | Path) -> tuple[Any, Any]:
    """Load a zoo model directory: ``(model in eval mode, processor)`` of its own class (LLaVA or LLaVA-NeXT)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json; build the zoo first (uqmerge zoo build DIR)")
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(directory)
    # A freshly initialised model's directory has no zoo generation config: without it, generation runs on
    # past ``<|end|>`` and exact match reads a right answer as wrong ("green green green green").
    configure_generation(model, processor)
    return model.eval(), processor


def stop_token_ids(processor: Any) -> list[int]:
    """Ids that end an answer: ``<|end|>`` (the chat template's end of turn) and ``</s>``."""
    tokenizer = processor.tokenizer
    return [tokenizer.convert_tokens_to_ids(END_TOKEN), tokenizer.eos_token_id]


def configure_generation(model: Any, processor: Any) -> None:
    """Give ``model`` the zoo's generation config: greedy, stopping at ``<|end|>`` or ``</s>``."""
    generation = model.generation_config
    generation.eos_token_id = stop_token_ids(processor)
    generation.pad_token_id = processor.tokenizer.pad_token_id
    generation.do_sample = False
    generation.max_new_tokens = MAX_NEW_TOKENS


def save_zoo_model(model: Any, processor: Any, path: str | Path) -> Path:
    """``save_pretrained`` the model (with a greedy, ``<|end|>``-stopping generation config) and processor."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    configure_generation(model, processor)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def open_prompt(processor: Any, question: str, *, system: str | None = None) -> str:
    """The chat prompt of an open-ended question (image first, then the question), ready for generation."""
    return render_prompt(processor, build_messages(question, system))


def mc_prompt(
    processor: Any, question: str, options: Sequence[str], *, hint: str | None = None, system: str | None = None
) -> str:
    """The chat prompt of a multiple-choice item in the UQ format (lettered options, answer instruction)."""
    return render_prompt(processor, build_messages(format_user_text(question, options, hint), system))


def answer_target(answer: str) -> str:
    """The text the model is trained to produce after the prompt: the answer, then ``<|end|>``."""
    return f"{answer} {END_TOKEN}"


def pixel_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Images as a uint8 ``(n, 3, H, W)`` tensor (normalise with :func:`normalise_pixels`)."""
    import numpy as np

    if not images:
        return torch.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def normalise_pixels(pixels: torch.Tensor, processor: Any) -> torch.Tensor:
    """Float pixel values as the processor's CLIP image processor makes them from same-size images.

    The zoo's images already have the model's input size, so resizing and cropping are identities and
    only ``rescale`` and ``normalize`` remain; ``tests/test_zoo_build.py`` checks the result against
    the processor itself.
    """
    image_processor = processor.image_processor
    crop = image_processor.crop_size
    size = (crop["height"], crop["width"]) if crop else None
    if size is not None and tuple(pixels.shape[-2:]) != size:
        raise ConfigError(f"images are {tuple(pixels.shape[-2:])} pixels but the processor expects {size}")
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) * float(image_processor.rescale_factor) - mean) / std


def pixel_inputs(pixels: torch.Tensor, processor: Any) -> dict[str, torch.Tensor]:
    """The model's image inputs for uint8 ``pixels`` ``(n, 3, H, W)``, as its processor makes them.

    LLaVA: ``pixel_values`` (:func:`normalise_pixels`). LLaVA-NeXT (an image processor with
    ``image_grid_pinpoints``) with one grid point of the images' own size: the base image and its one tile
    are both the image, so ``pixel_values`` is ``(n, 2, 3, H, W)`` with ``image_sizes`` ``(n, 2)``; other
    grids are refused. ``tests/test_zoo_hetero.py`` checks both against the processor.
    """
    normalised = normalise_pixels(pixels, processor)
    grid = getattr(processor.image_processor, "image_grid_pinpoints", None)
    if grid is None:
        return {"pixel_values": normalised}
    size = [int(pixels.shape[-2]), int(pixels.shape[-1])]
    if [list(point) for point in grid] != [size]:
        raise ConfigError(f"the zoo feeds LLaVA-NeXT one tile: image_grid_pinpoints must be [{size}], got {grid}")
    n = int(pixels.shape[0])
    return {
        "pixel_values": normalised.unsqueeze(1).expand(n, 2, *normalised.shape[1:]).contiguous(),
        "image_sizes": torch.tensor([size] * n, dtype=torch.long).reshape(n, 2),
    }
