"""Synthetic checkpoints for tests, the demo and benchmarks: seeded fine-tune-like copies of a base."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from uqmerge.checkpoint.layouts import detect_layout
from uqmerge.checkpoint.reader import CheckpointReader
from uqmerge.checkpoint.writer import ShardedWriter

ONE_GB = 1000**3


def make_fake_finetune(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    scale: float = 0.01,
    components: Iterable[str] = ("projector", "language_model"),
    max_shard_size: int = 5 * ONE_GB,
) -> Path:
    """Copy ``base_dir`` adding seeded Gaussian "task vectors" (std ``scale`` × tensor std) to ``components``.

    The vision tower is left identical by default, as in LLaVA-style fine-tuning. Returns ``out_dir``.
    """
    base = CheckpointReader(base_dir)
    classes = detect_layout(base.config).classify_all(base.names)
    chosen = set(components)
    generator = torch.Generator().manual_seed(seed)
    specs = [(n, base.info(n).dtype, base.info(n).shape) for n in base.names]
    with ShardedWriter(out_dir, specs, max_shard_size=max_shard_size, force=True) as writer:
        for name in base.names:
            tensor = base.read(name)
            if tensor.is_floating_point() and classes[name].component in chosen:
                t32 = tensor.float()
                std = float(t32.std()) if t32.numel() > 1 else 1.0
                noise = torch.randn(t32.shape, generator=generator) * (scale * (std or 1.0))
                tensor = (t32 + noise).to(tensor.dtype)
            writer.write(name, tensor)
        writer.copy_aux_files(base.path)
        writer.commit()
    return Path(out_dir)


def make_random_checkpoint(
    out_dir: str | Path,
    shapes: dict[str, tuple[int, ...]],
    *,
    seed: int,
    dtype: torch.dtype = torch.bfloat16,
    config: dict | None = None,
    base_dir: str | Path | None = None,
    noise: float = 0.01,
    max_shard_size: int = 2 * ONE_GB,
) -> Path:
    """Write random tensors of ``shapes``; with ``base_dir``, the base's tensors plus ``noise``-scaled deltas.

    Tensors are generated one at a time so arbitrarily large checkpoints need little memory.
    """
    import json

    base = CheckpointReader(base_dir) if base_dir is not None else None
    generator = torch.Generator().manual_seed(seed)
    specs = [(n, dtype, s) for n, s in shapes.items()]
    with ShardedWriter(out_dir, specs, max_shard_size=max_shard_size, force=True) as writer:
        for name, shape in shapes.items():
            if base is None:
                t = torch.randn(shape, generator=generator) * 0.02
            else:
                t = base.read(name).float() + noise * 0.02 * torch.randn(shape, generator=generator)
            writer.write(name, t.to(dtype))
            del t
        if config is not None:
            writer.add_file("config.json", json.dumps(config, indent=2))
        writer.commit()
    return Path(out_dir)
