"""UQ-Merge model selection (Algorithm 1) and its guidance ablations."""

from uqmerge.selection.algorithm import (
    ORDERS,
    STOP_RULES,
    SelectionError,
    SelectionResult,
    Step,
    select_by_score,
)
from uqmerge.selection.guidance import (
    GUIDANCES,
    RUN_GUIDANCES,
    random_subset,
    random_subsets,
    select_all,
    select_by_accuracy,
    select_by_cp_set_size,
    select_by_random_order,
    select_by_uncertainty,
)

__all__ = [
    "GUIDANCES",
    "ORDERS",
    "RUN_GUIDANCES",
    "STOP_RULES",
    "SelectionError",
    "SelectionResult",
    "Step",
    "random_subset",
    "random_subsets",
    "select_all",
    "select_by_accuracy",
    "select_by_cp_set_size",
    "select_by_random_order",
    "select_by_score",
    "select_by_uncertainty",
]
