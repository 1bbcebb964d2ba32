"""Multiple-choice UQ data: the JSONL format, benchmark adapters, ``--data`` specs, sampling and padding.

**JSONL format** (one item a line)::

    {"id": "q1", "image": "images/q1.png", "question": "What colour is the circle?",
     "options": ["red", "blue"], "hint": "optional context", "answer": "red"}

``image`` is a path relative to the JSONL file (absolute paths are used as they are). ``answer`` is
optional; it is either the text of the correct option (matched exactly; this wins when an option's
text is itself a letter) or its letter ``A``, ``B``, … in the order of ``options``. Items need at
least two distinct options, and a given answer must be one of them; otherwise :class:`DataError`
names the file and the item.

**Data specs** (``--data SPEC``, repeatable)::

    path/to/items.jsonl                 the JSONL format above (``jsonl:PATH`` is the same)
    ADAPTER:SOURCE[:SPLIT]              a benchmark in its published layout
    lmms:TASK or lmms:DIR/TASK          a multiple-choice lmms-eval task (its own, or a local YAML under DIR)

``ADAPTER`` is one of ``mmbench``, ``scienceqa``, ``seedbench``, ``ai2d``, ``oodcv``. ``SOURCE`` is a
local file (``.tsv``/``.csv``/``.parquet``/``.json``/``.jsonl``), a local dataset directory, or a
Hugging Face hub id with an optional config after ``@`` (``lmms-lab/MMBench@en``); ``SPLIT`` defaults
to the adapter's evaluation split for hub ids and to the only split of a local file. Examples:
``mmbench:lmms-lab/MMBench@en:dev``, ``mmbench:/data/mmbench_dev_20230712.tsv``,
``scienceqa:derek-thomas/ScienceQA:test``, ``seedbench:/data/SEED-Bench.json``,
``oodcv:/data/ood/oodcv-vqa/oodcv-vqa.json``. Everything is read with ``datasets``; nothing is
downloaded unless SOURCE is a hub id and the machine is online. ``lmms:`` specs read the task's documents
through lmms-eval's task definition (:mod:`uqmerge.uq.lmms_data`, the ``lmms`` extra).

Preparation (per dataset) does not depend on the order of the source's rows: items are put in
canonical order (:func:`canonical_order`: natural order of their ids), and every draw is seeded by
:func:`~uqmerge.core.seeds.stable_seed` of the UQ seed, the dataset name and the item id.
``sample_ratio`` keeps the ``round(ratio * n)`` items with the lowest ``stable_unit(seed, "sample",
dataset, id)`` (so a larger ratio keeps a superset; an empty result is an error); items with fewer than
``real_options`` options get distractors drawn from the other items' options, inserted at random positions
(the real options keep their order); finally ``I don't know`` and ``None of the above`` are appended.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from uqmerge.core.errors import DataError
from uqmerge.core.jsonl import jsonl_rows
from uqmerge.core.prompts import LETTERS
from uqmerge.core.seeds import stable_seed, stable_unit
from uqmerge.uq.prompts import IDK_OPTION, NOTA_OPTION

logger = logging.getLogger(__name__)

ADAPTERS: tuple[str, ...] = ("jsonl", "mmbench", "scienceqa", "seedbench", "ai2d", "oodcv", "lmms")

DEFAULT_HUB_SPLITS: Mapping[str, str] = {
    "mmbench": "dev",
    "scienceqa": "test",
    "seedbench": "test",
    "ai2d": "test",
    "oodcv": "train",
}

SEEDBENCH_IMAGE_CATEGORIES: Mapping[int, str] = {
    1: "Scene Understanding",
    2: "Instance Identity",
    3: "Instance Location",
    4: "Instance Attributes",
    5: "Instances Counting",
    6: "Spatial Relation",
    7: "Instance Interaction",
    8: "Visual Reasoning",
    9: "Text Understanding",
}
"""SEED-Bench's nine image categories (``question_type_id`` 1–9); ids 10–12 are video tasks."""

COUNT_WORDS: tuple[str, ...] = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_DIGITS = re.compile(r"(\d+)")


class UnreadableImageError(DataError):
    """An item's image cannot be opened or decoded (the item is skipped and reported, not fatal)."""


@dataclass(frozen=True)
class ImageRef:
    """Where an item's image comes from: a file ``path`` or encoded ``data`` bytes (exactly one)."""

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"<{len(self.data or b'')} encoded bytes>"

    def load(self) -> Image.Image:
        """Decode the image as RGB; raise :class:`UnreadableImageError` with the cause otherwise."""
        try:
            if self.path is not None:
                with Image.open(self.path) as img:
                    return img.convert("RGB")
            if self.data is None:
                raise ValueError("no image path or data")
            with Image.open(io.BytesIO(self.data)) as img:
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(f"unreadable image {self.describe()}: {e}") from e

    def digest(self) -> str:
        """SHA-256 of the encoded image (``missing:…`` when the file cannot be read)."""
        try:
            raw = self.path.read_bytes() if self.path is not None else (self.data or b"")
        except OSError as e:
            return f"missing:{type(e).__name__}"
        return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class MCItem:
    """One validated multiple-choice item as read from a source (before padding)."""

    id: str
    question: str
    options: tuple[str, ...]
    image: ImageRef
    hint: str | None = None
    answer: int | None = None
    """Index of the correct option in ``options``, or None when the source has no label."""
    category: str | None = None


@dataclass(frozen=True)
class UQItem:
    """A prepared item: real options, seeded distractors, then ``I don't know`` / ``None of the above``."""

    id: str
    question: str
    options: tuple[str, ...]
    image: ImageRef
    hint: str | None
    answer: int | None
    """Index of the correct option in ``options`` (after padding), or None."""
    n_real: int
    n_distractors: int
    category: str | None = None

    @property
    def letters(self) -> tuple[str, ...]:
        return LETTERS[: len(self.options)]


@dataclass(frozen=True)
class MCDataset:
    """Validated items of one ``--data`` spec, with what the adapter left out and why."""

    name: str
    spec: str
    items: tuple[MCItem, ...]
    n_source: int
    excluded: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UQDataset:
    """A sampled, padded dataset ready for scoring, its items in canonical order (:func:`canonical_order`)."""

    name: str
    spec: str
    items: tuple[UQItem, ...]
    n_source: int
    n_loaded: int
    excluded: Mapping[str, int]
    n_underpadded: int

    def fingerprint(self) -> str:
        """SHA-256 over the prepared items in canonical order: id, question, hint, options after padding,
        answer and image bytes (what is scored, whatever the order of the source's rows)."""
        h = hashlib.sha256()
        for it in canonical_order(self.items):
            record = [it.id, it.question, it.hint, list(it.options), it.answer, it.image.digest()]
            h.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def identity(self) -> dict[str, Any]:
        """What identifies the scored data: the name (it keys every draw), the item count and :meth:`fingerprint`."""
        return {"name": self.name, "n_items": len(self.items), "fingerprint": self.fingerprint()}


def _natural(text: str) -> tuple[str | int, ...]:
    """``q10`` → ``("q", 10, "")``: digit runs compare as numbers, so ``q2`` sorts before ``q10``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text)))


def canonical_key(item: MCItem | UQItem) -> tuple[Any, ...]:
    """Sort key of an item: its id in natural order, then its content (a tie-break for repeated ids)."""
    answer = -1 if item.answer is None else item.answer
    content = (item.question, item.hint or "", item.options, answer, item.category or "", item.image.describe())
    return (_natural(item.id), item.id, *content)


_Item = TypeVar("_Item", "MCItem", "UQItem")


def canonical_order(items: Iterable[_Item]) -> list[_Item]:
    """``items`` sorted by :func:`canonical_key`: the order UQ prepares, scores and reports them in."""
    return sorted(items, key=canonical_key)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec: adapter, source (path or hub id), optional hub config and split."""

    adapter: str
    source: str
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        text = f"{self.adapter}:{self.source}"
        if self.config:
            text += f"@{self.config}"
        if self.split:
            text += f":{self.split}"
        return text


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``PATH.jsonl`` or ``ADAPTER:SOURCE[@CONFIG][:SPLIT]`` (see the module docstring)."""
    text = spec.strip()
    if not text:
        raise DataError("empty --data spec; give a JSONL path or ADAPTER:SOURCE[:SPLIT]")
    head, sep, rest = text.partition(":")
    if not sep or head.lower() not in ADAPTERS:
        return DataSpec(adapter="jsonl", source=text)
    adapter = head.lower()
    if not rest:
        raise DataError(f"--data {spec!r}: missing SOURCE after '{head}:'")
    split: str | None = None
    source, colon, tail = rest.rpartition(":")
    if colon and tail and re.fullmatch(r"[A-Za-z0-9_\-\[\]%+]+", tail) and not Path(rest).exists():
        split = tail
    else:
        source = rest
    config: str | None = None
    if "@" in source and not Path(source).expanduser().exists():
        source, _, config = source.rpartition("@")
        config = config or None
    if adapter == "jsonl" and (config or split):
        raise DataError(f"--data {spec!r}: a JSONL file takes no @CONFIG or :SPLIT")
    if adapter == "lmms" and (config or split):
        raise DataError(f"--data {spec!r}: lmms:TASK takes no @CONFIG or :SPLIT (the task's YAML names its split)")
    return DataSpec(adapter=adapter, source=source, config=config, split=split)


# ----------------------------------------------------------------------------------------------------
# item construction and validation


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none")


def _text(value: Any) -> str | None:
    return None if _blank(value) else str(value).strip()


def resolve_answer(answer: Any, options: Sequence[str], *, where: str) -> int | None:
    """Index of ``answer`` in ``options``: exact option text first, then a letter, then an int index."""
    if _blank(answer):
        return None
    if isinstance(answer, bool):
        raise DataError(f"{where}: answer {answer!r} is not an option text or letter")
    if isinstance(answer, int | float) and float(answer).is_integer():
        index = int(answer)
        if 0 <= index < len(options):
            return index
        raise DataError(f"{where}: answer index {index} is outside the {len(options)} options")
    text = str(answer).strip()
    if text in options:
        return options.index(text)
    if len(text) == 1 and text in LETTERS:
        index = LETTERS.index(text)
        if index < len(options):
            return index
    raise DataError(
        f"{where}: answer {text!r} is neither one of the options {list(options)} nor the letter of one "
        f"(A–{LETTERS[len(options) - 1]}); fix the item or drop its answer"
    )


def make_item(
    *,
    item_id: Any,
    question: Any,
    options: Sequence[Any],
    image: ImageRef,
    hint: Any = None,
    answer: Any = None,
    category: Any = None,
    where: str,
) -> MCItem:
    """Validate one item (≥ 2 distinct options, answer among them) and build it; ``where`` names it."""
    q = _text(question)
    if q is None:
        raise DataError(f"{where}: empty question")
    opts = [str(o).strip() for o in options if not _blank(o)]
    if len(opts) < 2:
        raise DataError(f"{where}: needs at least 2 options, has {len(opts)} ({opts})")
    if len(set(opts)) != len(opts):
        dupes = sorted(o for o, c in Counter(opts).items() if c > 1)
        raise DataError(f"{where}: duplicate options {dupes}")
    if len(opts) + 2 > len(LETTERS):
        raise DataError(f"{where}: {len(opts)} options is more than letters A–Z can label")
    return MCItem(
        id=str(item_id),
        question=q,
        options=tuple(opts),
        image=image,
        hint=_text(hint),
        answer=resolve_answer(answer, opts, where=where),
        category=_text(category),
    )


def _image_ref(value: Any, base_dir: Path | None, *, where: str) -> ImageRef:
    """An :class:`ImageRef` from a path, base64 string, bytes, ``{"bytes", "path"}`` dict, PIL image or list."""
    if isinstance(value, list | tuple):
        if not value:
            raise DataError(f"{where}: empty image list")
        value = value[0]
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return ImageRef(data=buf.getvalue())
    if isinstance(value, bytes | bytearray):
        return ImageRef(data=bytes(value))
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return ImageRef(data=bytes(value["bytes"]))
        if value.get("path"):
            return _image_ref(str(value["path"]), base_dir, where=where)
        raise DataError(f"{where}: image has neither bytes nor path")
    if isinstance(value, str) and value.strip():
        text = value.strip()
        looks_like_base64 = len(text) >= 64 and _BASE64.fullmatch(text) is not None
        if looks_like_base64 and not text.lower().endswith(_IMAGE_SUFFIXES):
            try:
                return ImageRef(data=base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                pass
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return ImageRef(path=path)
    raise DataError(f"{where}: no image (got {type(value).__name__})")


# ----------------------------------------------------------------------------------------------------
# the native JSONL format


def load_jsonl(path: str | Path, *, name: str | None = None) -> MCDataset:
    """Read the JSONL item format (module docstring); images resolve relative to the file."""
    file = Path(path).expanduser()
    items: list[MCItem] = []
    seen: set[str] = set()
    for lineno, row in jsonl_rows(file, "UQ data file"):
        if not isinstance(row, dict):
            raise DataError(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}")
        item_id = row.get("id", f"line{lineno}")
        where = f"{file}:{lineno} (item {item_id!r})"
        missing = [k for k in ("question", "options", "image") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        unknown = sorted(set(row) - {"id", "image", "question", "options", "hint", "answer", "category"})
        if unknown:
            raise DataError(f"{where}: unknown field(s) {unknown}")
        if not isinstance(row["options"], list):
            raise DataError(f"{where}: 'options' must be a list")
        if str(item_id) in seen:
            raise DataError(f"{where}: duplicate id {item_id!r}")
        seen.add(str(item_id))
        items.append(
            make_item(
                item_id=item_id,
                question=row["question"],
                options=row["options"],
                image=_image_ref(row["image"], file.parent, where=where),
                hint=row.get("hint"),
                answer=row.get("answer"),
                category=row.get("category"),
                where=where,
            )
        )
    return MCDataset(name=name or file.stem, spec=str(file), items=tuple(items), n_source=len(items))


# ----------------------------------------------------------------------------------------------------
# benchmark adapters (published layouts, read through ``datasets``)

Row = Mapping[str, Any]
RowResult = MCItem | str
"""An adapter maps a row to an item, or to the reason it is excluded by the benchmark's protocol."""


def _mmbench_row(row: Row, index: int, base: Path | None, where: str) -> RowResult:
    options = []
    for letter in LETTERS:
        if letter not in row or _blank(row[letter]):
            break
        options.append(row[letter])
    return make_item(
        item_id=row.get("index", index),
        question=row.get("question"),
        options=options,
        image=_image_ref(row.get("image"), base, where=where),
        hint=row.get("hint"),
        answer=row.get("answer"),
        category=row.get("category"),
        where=where,
    )


def _scienceqa_row(row: Row, index: int, base: Path | None, where: str) -> RowResult:
    if _blank(row.get("image")):
        return "no image (ScienceQA-IMG keeps image questions only)"
    task = _text(row.get("task"))
    if task is not None and task != "closed choice":
        return f"task {task!r} is not 'closed choice'"
    return make_item(
        item_id=row.get("id", index),
        question=row.get("question"),
        options=list(row.get("choices") or []),
        image=_image_ref(row.get("image"), base, where=where),
        hint=row.get("hint"),
        answer=row.get("answer"),
        category=row.get("category") or row.get("subject"),
        where=where,
    )


def _seedbench_image(row: Row, base: Path | None, where: str) -> ImageRef:
    if not _blank(row.get("image")) and row.get("image") != []:
        return _image_ref(row.get("image"), base, where=where)
    data_id = _text(row.get("data_id"))
    if data_id is None:
        raise DataError(f"{where}: neither 'image' nor 'data_id'")
    if base is not None:
        for candidate in (base / data_id, base / "SEED-Bench-image" / data_id):
            if candidate.exists():
                return ImageRef(path=candidate)
    return _image_ref(data_id, base, where=where)


def _seedbench_row(row: Row, index: int, base: Path | None, where: str) -> RowResult:
    if (_text(row.get("data_type")) or "image") != "image":
        return "video item (SEED-Bench image categories only)"
    try:
        type_id = int(row.get("question_type_id"))
    except (TypeError, ValueError):
        type_id = -1
    if type_id not in SEEDBENCH_IMAGE_CATEGORIES:
        return f"question_type_id {row.get('question_type_id')!r} is not an image category (1-9)"
    return make_item(
        item_id=row.get("question_id", index),
        question=row.get("question"),
        options=[row.get(f"choice_{c}") for c in "abcd"],
        image=_seedbench_image(row, base, where),
        answer=row.get("answer"),
        category=SEEDBENCH_IMAGE_CATEGORIES[type_id],
        where=where,
    )


def _ai2d_row(row: Row, index: int, base: Path | None, where: str) -> RowResult:
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    return make_item(
        item_id=row.get("id", index),
        question=row.get("question"),
        options=list(row.get("options") or []),
        image=_image_ref(row.get("image"), base, where=where),
        answer=answer,
        where=where,
    )


def _count_word(value: Any, where: str) -> str:
    text = str(value).strip().split()[-1] if str(value).strip() else ""
    try:
        number = int(text)
    except ValueError as e:
        raise DataError(f"{where}: expected a count, got {value!r}") from e
    return COUNT_WORDS[number] if 0 <= number < len(COUNT_WORDS) else str(number)


def _oodcv_row(row: Row, index: int, base: Path | None, where: str) -> RowResult:
    answer_type = _text(row.get("answer_type"))
    if answer_type is not None and answer_type != "number":
        return f"answer_type {answer_type!r} (counting questions only, as Kostumov et al. 2024)"
    options = [_count_word(o, where) for o in row.get("options") or []]
    return make_item(
        item_id=row.get("id", index),
        question=row.get("question"),
        options=options,
        image=_image_ref(row.get("image"), base, where=where),
        answer=_count_word(row.get("text_answer", row.get("answer")), where),
        category=row.get("situation"),
        where=where,
    )


_ROW_ADAPTERS: Mapping[str, Callable[[Row, int, Path | None, str], RowResult]] = {
    "mmbench": _mmbench_row,
    "scienceqa": _scienceqa_row,
    "seedbench": _seedbench_row,
    "ai2d": _ai2d_row,
    "oodcv": _oodcv_row,
}


def _undecoded(table: Any) -> Any:
    """Cast ``datasets.Image`` columns (also lists of images) to ``decode=False`` to keep raw bytes."""
    from datasets import Image as HFImage
    from datasets import List as HFList
    from datasets import Sequence as HFSequence

    for name, feature in table.features.items():
        if isinstance(feature, HFImage) and feature.decode:
            table = table.cast_column(name, HFImage(decode=False))
        elif isinstance(feature, HFList | HFSequence) and isinstance(feature.feature, HFImage):
            table = table.cast_column(name, HFList(HFImage(decode=False)))
    return table


def _json_field(path: Path) -> str | None:
    """``questions`` for SEED-Bench's original ``{"questions": [...]}`` file, else None."""
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"{"):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return "questions" if isinstance(data, dict) and isinstance(data.get("questions"), list) else None


def _load_table(spec: DataSpec) -> tuple[Any, Path | None]:
    """Load the rows of ``spec`` with ``datasets``; return the table and the directory images resolve from."""
    import datasets

    path = Path(spec.source).expanduser()
    try:
        if path.is_file():
            suffix = path.suffix.lower()
            builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
            if suffix not in builders:
                raise DataError(f"--data {spec}: unsupported file type {suffix!r} ({sorted(builders)})")
            kwargs: dict[str, Any] = {}
            if suffix == ".tsv":
                kwargs["delimiter"] = "\t"
            if suffix == ".json" and (json_field := _json_field(path)):
                kwargs["field"] = json_field
            table = datasets.load_dataset(builders[suffix], data_files=str(path), split="train", **kwargs)
            return _undecoded(table), path.parent
        if path.is_dir():
            loaded = datasets.load_dataset(str(path), spec.config)
            base = path
        else:
            loaded = datasets.load_dataset(spec.source, spec.config)
            base = None
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (connection, file-not-found, builder errors)
        raise DataError(
            f"--data {spec}: cannot load {spec.source!r} with datasets ({type(e).__name__}: {e}). "
            "Give a local file or directory, or a hub id on a machine that is online."
        ) from e
    splits = list(loaded.keys())
    split = spec.split or (splits[0] if len(splits) == 1 else DEFAULT_HUB_SPLITS.get(spec.adapter))
    if split not in loaded:
        raise DataError(f"--data {spec}: no split {split!r}; available: {splits} (add :SPLIT)")
    return _undecoded(loaded[split]), base


def load_adapter(spec: DataSpec, *, name: str | None = None) -> MCDataset:
    """Load a benchmark through its adapter; rows its protocol excludes are counted by reason."""
    if spec.adapter == "jsonl":
        dataset = load_jsonl(spec.source, name=name)
        return replace(dataset, spec=str(spec))
    if spec.adapter == "lmms":
        from uqmerge.uq.lmms_data import load_lmms_task

        return load_lmms_task(spec, name=name)
    table, base = _load_table(spec)
    adapter = _ROW_ADAPTERS[spec.adapter]
    items: list[MCItem] = []
    excluded: Counter[str] = Counter()
    for index, row in enumerate(table):
        where = f"{spec} row {index} (id {row.get('index', row.get('question_id', row.get('id', index)))!r})"
        result = adapter(row, index, base, where)
        if isinstance(result, str):
            excluded[result] += 1
        else:
            items.append(result)
    if excluded:
        logger.info("%s: excluded %s", spec, dict(excluded))
    return MCDataset(
        name=name or spec.adapter,
        spec=str(spec),
        items=tuple(items),
        n_source=len(table),
        excluded=dict(excluded),
    )


# ----------------------------------------------------------------------------------------------------
# preparation: sampling, padding, appended options


def sample_items(items: Sequence[MCItem], ratio: float, *, seed: int, dataset: str) -> list[MCItem]:
    """The ``round(ratio * n)`` items of lowest ``stable_unit(seed, "sample", dataset, item.id)``, in canonical order.

    Each item's rank depends on its id alone, so the sample does not depend on the order of ``items``, and a
    larger ``ratio`` keeps a superset of a smaller one's items.
    """
    ordered = canonical_order(items)
    if ratio >= 1.0:
        return ordered
    k = round(ratio * len(ordered))
    ranked = sorted(range(len(ordered)), key=lambda i: (stable_unit(seed, "sample", dataset, ordered[i].id), i))
    return [ordered[i] for i in sorted(ranked[:k])]


def pad_item(item: MCItem, pool: Sequence[str], *, real_options: int, seed: int, dataset: str) -> UQItem:
    """Insert seeded distractors from ``pool`` up to ``real_options``, then append IDK and NOTA."""
    rng = random.Random(stable_seed(seed, "pad", dataset, item.id))
    extras = (IDK_OPTION, NOTA_OPTION)
    # Items that already carry the two extra options (e.g. the zoo's) keep them once, at the end.
    slots: list[tuple[str, int | None]] = [(o, i) for i, o in enumerate(item.options) if o not in extras]
    taken = {o.casefold() for o in item.options}
    need = max(0, real_options - len(slots))
    candidates = [o for o in pool if o.casefold() not in taken]
    chosen = rng.sample(candidates, min(need, len(candidates))) if need else []
    n_real = len(slots)
    for distractor in chosen:
        slots.insert(rng.randrange(len(slots) + 1), (distractor, None))
    options = [text for text, _ in slots] + list(extras)
    answer = None
    if item.answer is not None:
        if item.options[item.answer] in extras:
            answer = len(slots) + extras.index(item.options[item.answer])
        else:
            answer = next(pos for pos, (_, orig) in enumerate(slots) if orig == item.answer)
    return UQItem(
        id=item.id,
        question=item.question,
        options=tuple(options),
        image=item.image,
        hint=item.hint,
        answer=answer,
        n_real=n_real,
        n_distractors=len(chosen),
        category=item.category,
    )


def option_pool(items: Iterable[MCItem]) -> list[str]:
    """Distinct option texts of ``items`` in order of first appearance (the distractor pool)."""
    return list(dict.fromkeys(o for it in items for o in it.options if o not in (IDK_OPTION, NOTA_OPTION)))


def prepare_dataset(dataset: MCDataset, *, seed: int, sample_ratio: float, real_options: int) -> UQDataset:
    """Sample, pad and append the two extra options, in canonical order; :class:`DataError` if nothing is left.

    The result does not depend on the order of ``dataset.items`` (the distractor pool is read in canonical
    order too).
    """
    if not dataset.items:
        reasons = f" (excluded: {dict(dataset.excluded)})" if dataset.excluded else ""
        raise DataError(f"dataset {dataset.name!r} ({dataset.spec}) has no usable items{reasons}")
    sampled = sample_items(dataset.items, sample_ratio, seed=seed, dataset=dataset.name)
    if not sampled:
        raise DataError(
            f"dataset {dataset.name!r} ({dataset.spec}) is empty after sampling: {len(dataset.items)} "
            f"items x sample_ratio {sample_ratio} rounds to 0; raise --sample-ratio"
        )
    pool = option_pool(canonical_order(dataset.items))
    prepared = [pad_item(it, pool, real_options=real_options, seed=seed, dataset=dataset.name) for it in sampled]
    under = sum(1 for it in prepared if it.n_real + it.n_distractors < real_options)
    if under:
        logger.warning(
            "dataset %r: %d item(s) have fewer than %d real options because the distractor pool is too "
            "small; their letters stop earlier",
            dataset.name,
            under,
            real_options,
        )
    return UQDataset(
        name=dataset.name,
        spec=dataset.spec,
        items=tuple(prepared),
        n_source=dataset.n_source,
        n_loaded=len(dataset.items),
        excluded=dict(dataset.excluded),
        n_underpadded=under,
    )


def _unique_names(base: Sequence[str]) -> list[str]:
    counts = Counter(base)
    seen: Counter[str] = Counter()
    names = []
    for b in base:
        seen[b] += 1
        names.append(b if counts[b] == 1 else f"{b}#{seen[b]}")
    return names


def load_uq_datasets(
    specs: Sequence[str | DataSpec], *, seed: int = 0, sample_ratio: float = 1.0, real_options: int = 4
) -> list[UQDataset]:
    """Parse, load, validate and prepare every ``--data`` spec (names: file stem, adapter, or an lmms-eval task's
    alias or name; made unique)."""
    if not specs:
        raise DataError("no UQ data given; pass at least one --data SPEC")
    parsed = [s if isinstance(s, DataSpec) else parse_data_spec(s) for s in specs]
    loaded = [load_adapter(spec) for spec in parsed]
    return [
        prepare_dataset(replace(d, name=name), seed=seed, sample_ratio=sample_ratio, real_options=real_options)
        for d, name in zip(loaded, _unique_names([d.name for d in loaded]), strict=True)
    ]
