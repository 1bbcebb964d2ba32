"""The lmms-eval plugin entry point: registers uqmerge's model adapter under the model name ``uqmerge``.

pyproject declares it in the ``lmms_eval.models`` entry-point group, lmms-eval's documented way to add a model
without forking it; lmms-eval imports the adapter class (:mod:`uqmerge.evaluate.lmms_model`) only when the
model is requested.
"""

from __future__ import annotations

from typing import Any

from uqmerge.uq.lmms_tasks import MODEL_NAME

"""The name lmms-eval knows the adapter by (``--model uqmerge`` on lmms-eval's own command line)."""

CLASS_PATH = "uqmerge.evaluate.lmms_model.UQMergeLMM"


def manifests() -> list[Any]:
    """The model manifests of the entry point (lmms-eval calls this when it builds its model registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)]
