"""The in-memory sink: merged tensors go straight into a live transformers model's parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from uqmerge.checkpoint.layouts import Layout
from uqmerge.core.errors import PlanError


def map_keys_to_parameters(model: nn.Module, layout: Layout, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """On-disk key → the model's parameter/buffer tensor, through the layout's explicit renames.

    Every key must land on a tensor of the model and every tensor of the model must be covered (tied
    aliases of a covered tensor excepted); otherwise a PlanError lists the offenders — nothing is dropped.
    """
    state = model.state_dict(keep_vars=True)
    targets: dict[str, torch.Tensor] = {}
    unknown = []
    for key in keys:
        module_name = layout.module_name(key)
        if module_name in state:
            targets[key] = state[module_name]
        else:
            unknown.append(f"{key} -> {module_name}")
    if unknown:
        raise PlanError(
            f"{len(unknown)} checkpoint tensor(s) have no parameter in the live {type(model).__name__} "
            f"(layout {layout.name!r}): {unknown[:5]}"
        )
    covered = {t.data_ptr() for t in targets.values()}
    uncovered = [name for name, t in state.items() if t.data_ptr() not in covered and t.is_floating_point()]
    if uncovered:
        raise PlanError(f"{len(uncovered)} model tensor(s) would not be written: {uncovered[:5]}")
    return targets


class ModelSink:
    """Writes each merged tensor into the resident model (cast to the parameter's dtype and device).

    After ``abort`` the model holds a partial merge; callers re-merge before using it.
    """

    def __init__(self, model: nn.Module, layout: Layout, keys: Iterable[str]) -> None:
        self.targets = map_keys_to_parameters(model, layout, keys)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        target = self.targets[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise PlanError(f"{name}: merged shape {list(tensor.shape)} != model parameter {list(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor)

    def close(self) -> None:
        """Nothing to finalise: parameters were updated in place."""

    def abort(self) -> None:
        """Nothing to discard (see the class docstring)."""
