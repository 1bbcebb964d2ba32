"""Exception types: every user-facing failure names the file, tensor or item and what to do."""


class UQMergeError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ConfigError(UQMergeError):
    """A config file or option is invalid (unknown key, out-of-range parameter, unknown method)."""


class CheckpointError(UQMergeError):
    """A checkpoint directory or file cannot be read as expected (corrupt header, missing tensor)."""


class LayoutError(UQMergeError):
    """Tensors could not be classified into components, or architectures differ."""


class PlanError(UQMergeError):
    """The merge plan is inconsistent: coverage, shapes or inputs disagree."""


class OutputError(UQMergeError):
    """The output location cannot be written safely (not empty, not writable)."""


class DataError(UQMergeError):
    """An evaluation or UQ dataset item is malformed."""


class MappingError(LayoutError):
    """Another architecture's tensors cannot be mapped onto the target's (no shared LLM, a bad mapping file)."""
