"""A peft LoRA adapter read as a full checkpoint: base tensors, with θ_0 + (α/r)·B·A where the adapter targets them.

:class:`LoraCheckpoint` offers what the merge engine uses from a
:class:`~uqmerge.checkpoint.reader.CheckpointReader` (``path``, ``config``, ``names``, ``tensors``, ``info``,
``read``, ``read_rows``, ``total_bytes``, ``weight_files``) over an adapter directory and a reader of the base
it was trained on, so a LoRA adapter can be a ``models:`` entry of any merge method. Nothing dense is built
ahead: each targeted tensor's update is computed from its two small factors when that tensor is read.

Key mapping. peft saves ``base_model.model.<module>.lora_A.weight`` with ``<module>`` the in-memory module
name of transformers (``model.language_model.layers.0.self_attn.q_proj`` for LLaVA), while checkpoints hold
on-disk keys (``language_model.model.layers.0.self_attn.q_proj.weight``). The base's layout maps every on-disk
key to its in-memory name (:meth:`~uqmerge.checkpoint.layouts.Layout.module_name`); the inverse of that map
places each adapter tensor. An adapter tensor that maps to no base tensor, or whose shape disagrees with it,
is an error: nothing is dropped.

What is supported (peft ``LoraConfig``, ``peft_type: LORA``):

- LoRA on linear layers: ΔW = s·B·A with B (out, r), A (r, in); ``fan_in_fan_out`` (GPT-2 ``Conv1D``,
  weights stored (in, out)) gives (s·B·A)ᵀ; LoRA on embeddings (``lora_embedding_A`` (r, vocab),
  ``lora_embedding_B`` (dim, r)) gives ΔW = (s·B·A)ᵀ, as peft's ``get_delta_weight``;
- s = α/r, or α/√r with ``use_rslora``; r and α per module from ``rank_pattern`` / ``alpha_pattern``
  (matched like peft 0.21's ``get_pattern_key``: the first key ``k`` with ``re.match(rf"(.*\\.)?({k})$",
  module)``); the stored rank must equal the configured one;
- ``lora_bias`` (Δbias = s·b of ``lora_B.bias``);
- full tensors the adapter saves (``modules_to_save``, trained biases, peft's copies of targeted embedding
  layers under ``.base_layer.``): they replace θ_0 of that tensor, and a low-rank update of the same tensor
  is added on top, as ``merge_and_unload`` does.

Refused with an error naming ``adapter_config.json``: other peft types, DoRA and the other LoRA variants,
initialisations that modify the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA; convert those adapters with
peft's ``path_initial_model_for_weight_conversion`` first), LoRA on convolutions, layer replication, trainable
tokens and ``target_parameters``; likewise any configuration field this module does not know whose value is set.

Targeted tensors are returned in fp32 (θ_0 upcast, plus the update computed in fp32); peft's
``merge_and_unload`` adds the update in the model's dtype, so the two agree exactly only for an fp32 model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from uqmerge.checkpoint.layouts import Layout
from uqmerge.checkpoint.reader import CheckpointReader, load_pickled_state
from uqmerge.checkpoint.safetensors_format import TensorInfo, read_header, read_tensor, read_tensor_rows
from uqmerge.core.errors import CheckpointError, ConfigError, LayoutError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

# adapter_config.json fields that do not change the merged weights (how the adapter was found, trained or
# logged), or that are read below. Any other field must be unset (None, False, empty), else it is refused.
_HARMLESS_FIELDS = frozenset(
    {
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "auto_mapping",
        "peft_version",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "lora_dropout",
        "bias",
        "modules_to_save",
        "megatron_config",
        "megatron_core",
        "qalora_group_size",
        "ensure_weight_tying",
        "eva_config",
        "init_lora_weights",
        "r",
        "lora_alpha",
        "use_rslora",
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "lora_bias",
    }
)
# init_lora_weights values that only initialise the factors (the base weights stay untouched).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# Infixes of peft wrapper modules in the names of full tensors an adapter saves.
_WRAPPER_INFIXES = (".base_layer.", ".modules_to_save.")

UpdateKind = Literal["linear", "embedding", "bias"]


def is_lora_adapter(path: str | Path) -> bool:
    """True when ``path`` is a peft adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def peft_pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """The value of the first ``rank_pattern``/``alpha_pattern`` key matching ``module``, as peft resolves it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class LoraSettings:
    """The parts of ``adapter_config.json`` that determine the update's scale and orientation."""

    r: int
    alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: Mapping[str, int] | None = None
    alpha_pattern: Mapping[str, float] | None = None

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """(r, s) of ``module``: s = α/r, or α/√r with rsLoRA."""
        r = int(peft_pattern_value(self.rank_pattern or {}, module, self.r))
        alpha = float(peft_pattern_value(self.alpha_pattern or {}, module, self.alpha))
        return r, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)


@dataclass(frozen=True)
class LoraUpdate:
    """What the adapter does to one base tensor (on-disk ``key``): θ = (replacement or θ_0) + Δ.

    ``kind`` is the form of Δ: ``linear`` s·B·A (transposed with ``fan_in_fan_out``), ``embedding`` (s·B·A)ᵀ,
    ``bias`` s·b, or None (replacement only). ``lora_a``/``lora_b``/``replacement`` name adapter tensors; B and A
    are kept in peft's orientation (B (out, r), A (r, in); for embeddings ``lora_embedding_B`` (dim, r) and
    ``lora_embedding_A`` (r, vocab)).
    """

    key: str
    module: str
    kind: UpdateKind | None = None
    lora_a: str | None = None
    lora_b: str | None = None
    replacement: str | None = None
    rank: int = 0
    scale: float = 0.0
    fan_in_fan_out: bool = False

    @property
    def low_rank(self) -> bool:
        """True for a rank-r update of a weight (``linear`` or ``embedding``)."""
        return self.kind in ("linear", "embedding")

    @property
    def transposed(self) -> bool:
        """True when the stored weight is (B·A)ᵀ rather than B·A."""
        return self.kind == "embedding" or (self.kind == "linear" and self.fan_in_fan_out)


class _AdapterWeights:
    """The adapter's tensor file: safetensors (header now, data per read) or, opted in, a pickle."""

    def __init__(self, adapter_dir: Path, *, allow_pickle: bool) -> None:
        self._state: dict[str, torch.Tensor] | None = None
        safe, pickle = adapter_dir / ADAPTER_SAFETENSORS, adapter_dir / ADAPTER_PICKLE
        if safe.is_file():
            self.file = safe
            self.infos = read_header(safe)
        elif pickle.is_file():
            if not allow_pickle:
                raise CheckpointError(
                    f"{pickle}: pickled adapter weights; unpickling can run arbitrary code. Convert to safetensors "
                    "or pass --allow-pickle (loads with torch.load(weights_only=True))"
                )
            self.file = pickle
            state = load_pickled_state(pickle)
            self._state = state
            self.infos = {k: TensorInfo(k, pickle, v.dtype, tuple(v.shape)) for k, v in state.items()}
        else:
            raise CheckpointError(
                f"{adapter_dir}: has {ADAPTER_CONFIG} but no {ADAPTER_SAFETENSORS} (or {ADAPTER_PICKLE})"
            )

    def read(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if self._state is None:
            return read_tensor(info)
        return self._state[name].clone()

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        info = self.infos[name]
        if self._state is None:
            return read_tensor_rows(info, start, stop)
        return self._state[name][start:stop].clone()


def _load_adapter_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def parse_lora_settings(data: Mapping[str, Any], source: Path) -> LoraSettings:
    """Check that ``adapter_config.json`` describes a plain LoRA whose merge is W + s·B·A, and read its scale."""
    peft_type = data.get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(
            f"{source}: peft_type {peft_type!r} is not supported; only LoRA adapters (peft_type LORA) can be merged"
        )
    if data.get("use_dora"):
        raise CheckpointError(
            f"{source}: DoRA adapters (use_dora: true) are not supported: their update rescales the weight's "
            "column norms and is not a task vector (α/r)·B·A. Merge the adapter into its base with peft's "
            "merge_and_unload() and use the result as a dense model."
        )
    init = data.get("init_lora_weights", True)
    if init not in _PLAIN_INITS or data.get("lora_ga_config"):
        raise CheckpointError(
            f"{source}: init_lora_weights {init!r} modified the base weights when training started, so the adapter "
            "does not apply to the original base. Convert it with peft's save_pretrained("
            "path_initial_model_for_weight_conversion=...) first, or merge it with merge_and_unload()."
        )
    unsupported = sorted(k for k, v in data.items() if k not in _HARMLESS_FIELDS and v not in (None, False, {}, []))
    if unsupported:
        shown = ", ".join(f"{k}={data[k]!r}" for k in unsupported)
        raise CheckpointError(
            f"{source}: unsupported LoRA setting(s) {shown}; uqmerge merges plain LoRA (W + s·B·A) only. Merge the "
            "adapter into its base with peft's merge_and_unload() and use the result as a dense model."
        )
    try:
        r, alpha = int(data["r"]), float(data["lora_alpha"])
        rank_pattern = {str(k): int(v) for k, v in (data.get("rank_pattern") or {}).items()}
        alpha_pattern = {str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source}: invalid or missing r / lora_alpha / rank_pattern / alpha_pattern ({e!r})"
        ) from e
    if r <= 0 or any(v <= 0 for v in rank_pattern.values()):
        raise CheckpointError(f"{source}: LoRA ranks must be positive (r={r}, rank_pattern={rank_pattern})")
    return LoraSettings(
        r=r,
        alpha=alpha,
        use_rslora=bool(data.get("use_rslora")),
        fan_in_fan_out=bool(data.get("fan_in_fan_out")),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )


def check_base_class(data: Mapping[str, Any], base: CheckpointReader, source: Path) -> None:
    """When the adapter records its base model class, the base's ``architectures`` must contain it."""
    recorded = (data.get("auto_mapping") or {}).get("base_model_class")
    architectures = list(base.config.get("architectures") or ())
    if recorded and architectures and recorded not in architectures:
        raise LayoutError(
            f"{source}: the adapter was trained on a {recorded} but the base {base.path} is {architectures}; "
            "give the base model the adapter was trained on"
        )


def _split_key(key: str) -> tuple[str, str]:
    """(module or tensor name, part) of an adapter key without the peft prefix; part '' for a full tensor."""
    for part in (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_embedding_A", ".lora_embedding_B"):
        if key.endswith(part):
            return key[: -len(part)], part.lstrip(".")
    return key, ""


def _full_tensor_name(name: str) -> str:
    """The in-memory parameter name of a full tensor peft saved, without wrapper infixes."""
    for infix in _WRAPPER_INFIXES:
        name = name.replace(infix, ".")
    return name


class LoraCheckpoint:
    """A LoRA adapter dir read as the full checkpoint base + update (see the module docstring)."""

    def __init__(self, path: str | Path, base: CheckpointReader, layout: Layout, *, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        self.base = base
        self.layout = layout
        config_path = self.path / ADAPTER_CONFIG
        self.adapter_config = _load_adapter_config(config_path)
        self.settings = parse_lora_settings(self.adapter_config, config_path)
        check_base_class(self.adapter_config, base, config_path)
        self.weights = _AdapterWeights(self.path, allow_pickle=allow_pickle)
        self._last_factors: tuple[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.updates: dict[str, LoraUpdate] = self._map_updates()
        self.tensors: dict[str, TensorInfo] = {name: self._info(name, info) for name, info in base.tensors.items()}

    @property
    def config(self) -> dict[str, Any]:
        """The base's ``config.json``: an adapter has the architecture of its base."""
        return self.base.config

    @property
    def names(self) -> list[str]:
        """The base's tensor names, in its on-disk order."""
        return self.base.names

    def _map_updates(self) -> dict[str, LoraUpdate]:
        by_module_name = {self.layout.module_name(k): k for k in self.base.names}
        file = self.weights.file
        parts: dict[str, dict[str, str]] = {}
        full: dict[str, str] = {}
        unmapped: list[str] = []
        for key in self.weights.infos:
            if not key.startswith(PEFT_PREFIX):
                unmapped.append(key)
                continue
            name, part = _split_key(key.removeprefix(PEFT_PREFIX))
            if "lora_magnitude_vector" in key:
                raise CheckpointError(f"{file}: tensor {key!r} is a DoRA magnitude; DoRA adapters are not supported")
            if not part and re.search(r"(^|\.)lora_", name):
                raise CheckpointError(
                    f"{file}: tensor {key!r} is no LoRA factor uqmerge knows (lora_A/lora_B.weight, lora_B.bias, "
                    "lora_embedding_A/B); was the adapter saved with its adapter name in the keys?"
                )
            if part:
                parts.setdefault(name, {})[part] = key
                target = f"{name}.bias" if part == "lora_B.bias" else f"{name}.weight"
            else:
                target = _full_tensor_name(name)
                full[target] = key
            if target not in by_module_name:
                unmapped.append(key)
        if unmapped:
            more = f" … and {len(unmapped) - 5} more" if len(unmapped) > 5 else ""
            raise CheckpointError(
                f"{file}: {len(unmapped)} adapter tensor(s) match no tensor of the base {self.base.path} (layout "
                f"{self.layout.name!r}), e.g. {unmapped[:5]}{more}. The adapter was trained on another model, or "
                f"its keys are not peft's '{PEFT_PREFIX}<module>.lora_A.weight' form."
            )
        updates: dict[str, LoraUpdate] = {}
        for module, found in parts.items():
            updates.update(self._module_updates(module, found, by_module_name))
        for target, key in full.items():
            base_key = by_module_name[target]
            self._check_shape(key, self.base.info(base_key).shape, base_key)
            old = updates.get(base_key)
            if old is None:
                updates[base_key] = LoraUpdate(base_key, target.rsplit(".", 1)[0], replacement=key)
            else:
                updates[base_key] = replace(old, replacement=key)
        order = {name: i for i, name in enumerate(self.base.names)}
        return dict(sorted(updates.items(), key=lambda kv: order[kv[0]]))

    def _module_updates(
        self, module: str, found: Mapping[str, str], by_module_name: Mapping[str, str]
    ) -> dict[str, LoraUpdate]:
        file = self.weights.file
        embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
        a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
        if a_part not in found or b_part not in found or (embedding and len(found) != 2):
            raise CheckpointError(
                f"{file}: module {module!r} has LoRA tensors {sorted(found)}; expected both {a_part} and {b_part}"
            )
        a, b = self.weights.infos[found[a_part]], self.weights.infos[found[b_part]]
        weight_key = by_module_name[f"{module}.weight"]
        base_shape = self.base.info(weight_key).shape
        rank, scale = self.settings.rank_and_scale(module)
        if len(a.shape) != 2 or len(b.shape) != 2 or len(base_shape) != 2:
            raise CheckpointError(
                f"{file}: module {module!r}: LoRA factors {list(a.shape)}, {list(b.shape)} on base tensor "
                f"{weight_key!r} {list(base_shape)}; only LoRA on linear and embedding layers is supported "
                "(not on convolutions)"
            )
        if a.shape[0] != rank or b.shape[1] != rank:
            raise CheckpointError(
                f"{file}: module {module!r}: factors of rank {a.shape[0]}/{b.shape[1]} but adapter_config.json gives "
                f"r={rank} for it (r / rank_pattern); the scale α/r would be wrong"
            )
        fan_in_fan_out = self.settings.fan_in_fan_out and not embedding
        transposed = embedding or fan_in_fan_out
        expected = (a.shape[1], b.shape[0]) if transposed else (b.shape[0], a.shape[1])
        if tuple(base_shape) != expected:
            raise CheckpointError(
                f"{file}: module {module!r}: LoRA update of shape {list(expected)} does not fit the base tensor "
                f"{weight_key!r} of shape {list(base_shape)}; the adapter was trained on another model"
            )
        kind: UpdateKind = "embedding" if embedding else "linear"
        out = {
            weight_key: LoraUpdate(
                weight_key, module, kind, found[a_part], found[b_part], None, rank, scale, fan_in_fan_out
            )
        }
        if "lora_B.bias" in found:
            bias_key = by_module_name[f"{module}.bias"]
            self._check_shape(found["lora_B.bias"], self.base.info(bias_key).shape, bias_key)
            out[bias_key] = LoraUpdate(bias_key, module, "bias", None, found["lora_B.bias"], None, rank, scale)
        return out

    def _check_shape(self, key: str, want: tuple[int, ...], base_key: str) -> None:
        got = self.weights.infos[key].shape
        if tuple(got) != tuple(want):
            raise CheckpointError(
                f"{self.weights.file}: tensor {key!r} has shape {list(got)} but the base tensor {base_key!r} has "
                f"{list(want)}; the adapter was trained on another model (or a resized vocabulary)"
            )

    def _info(self, name: str, base_info: TensorInfo) -> TensorInfo:
        update = self.updates.get(name)
        if update is None:
            return base_info
        if update.kind is None and update.replacement is not None:
            return self.weights.infos[update.replacement]
        dtype = torch.promote_types(base_info.dtype, torch.float32)
        return TensorInfo(name, self.weights.file, dtype, base_info.shape)

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name`` (targeted tensors: fp32, the dtype :meth:`read` returns)."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing (from the base {self.base.path})") from None

    def read_factors(self, update: LoraUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) of a low-rank update in peft's orientation, fp32 and unscaled.

        The last module's factors are cached (row blocks of one tensor read them once): do not modify them.
        """
        if not update.low_rank or update.lora_a is None or update.lora_b is None:
            raise ValueError(f"{update.key}: not a low-rank update")
        if self._last_factors is None or self._last_factors[0] != update.key:
            factors = (self.weights.read(update.lora_b).float(), self.weights.read(update.lora_a).float())
            self._last_factors = (update.key, factors)
        return self._last_factors[1]

    def read_replacement(self, update: LoraUpdate) -> torch.Tensor | None:
        """The full tensor the adapter saves for ``update.key`` (its stored dtype), or None."""
        return None if update.replacement is None else self.weights.read(update.replacement)

    def delta(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor | None:
        """The fp32 update Δ of tensor ``name`` (rows ``start:stop`` when given), None where it has none."""
        update = self.updates.get(name)
        if update is None or update.kind is None:
            return None
        if update.kind == "bias" and update.lora_b is not None:
            b = self.weights.read(update.lora_b).float()
            return update.scale * (b if rows is None else b[rows[0] : rows[1]])
        b, a = self.read_factors(update)
        if not update.transposed:
            return (b if rows is None else b[rows[0] : rows[1]]) @ a * update.scale
        return (b @ (a if rows is None else a[:, rows[0] : rows[1]])).T * update.scale

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``: the base's (stored dtype) or, where the adapter changes it, θ_0 + Δ in fp32."""
        update = self.updates.get(name)
        if update is None:
            return self.base.read(name)
        theta = self.weights.read(update.replacement) if update.replacement else self.base.read(name)
        delta = self.delta(name)
        return theta if delta is None else theta.to(self.tensors[name].dtype) + delta

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of :meth:`read` (reads only those rows of θ_0)."""
        update = self.updates.get(name)
        if update is None:
            return self.base.read_rows(name, start, stop)
        if update.replacement:
            theta = self.weights.read_rows(update.replacement, start, stop)
        else:
            theta = self.base.read_rows(name, start, stop)
        delta = self.delta(name, (start, stop))
        return theta if delta is None else theta.to(self.tensors[name].dtype) + delta

    def total_bytes(self) -> int:
        """Bytes of the tensors as :meth:`read` returns them."""
        return sum(i.nbytes for i in self.tensors.values())

    def weight_files(self) -> list[Path]:
        """The adapter's weight file and the base's weight files."""
        return sorted({self.weights.file, *self.base.weight_files()})


ModelReader = CheckpointReader | LoraCheckpoint
"""What a ``models:`` entry is read with: a checkpoint dir, or a LoRA adapter over the base."""


def open_model(
    path: str | Path, base: CheckpointReader | None, layout: Layout | None, *, allow_pickle: bool = False
) -> ModelReader:
    """A reader of a ``models:`` entry: :class:`LoraCheckpoint` for a peft adapter dir, else a CheckpointReader.

    An adapter needs the ``base`` it was trained on and that base's ``layout``.
    """
    p = Path(path)
    if not is_lora_adapter(p):
        return CheckpointReader(p, allow_pickle=allow_pickle)
    if base is None or layout is None:
        raise ConfigError(
            f"{p}: is a LoRA adapter ({ADAPTER_CONFIG}); set `base_model:` to the model it was trained on"
        )
    return LoraCheckpoint(p, base, layout, allow_pickle=allow_pickle)


def open_base(path: str | Path, *, allow_pickle: bool = False) -> CheckpointReader:
    """A reader of ``base_model:``, which must be a full checkpoint, not an adapter."""
    p = Path(path)
    if is_lora_adapter(p):
        raise ConfigError(
            f"{p}: `base_model:` is a LoRA adapter ({ADAPTER_CONFIG}); give the model it was trained on as the "
            "base and list the adapter under `models:`"
        )
    return CheckpointReader(p, allow_pickle=allow_pickle)
