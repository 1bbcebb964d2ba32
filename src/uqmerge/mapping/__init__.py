"""Cross-architecture tensor maps: another model's tensors seen under a target architecture's names.

A map is data (:mod:`.spec`): derived for the language model when both classes hold the same LLM (:mod:`.derive`),
or read from a mapping file (:mod:`.files`); :class:`.reader.MappedReader` reads a model through it.
"""

from uqmerge.mapping.derive import derive_map
from uqmerge.mapping.files import load_mapping_file, map_from_file
from uqmerge.mapping.reader import MappedReader
from uqmerge.mapping.spec import Concat, Copy, TensorMap

__all__ = ["Concat", "Copy", "MappedReader", "TensorMap", "derive_map", "load_mapping_file", "map_from_file"]
