"""Vision-language perturbation uncertainty (UQ) of MLLMs on multiple-choice data.

Modules, in data-flow order: :mod:`.data` (JSONL items, benchmark adapters, ``--data`` specs,
canonical order, sampling and padding), :mod:`.prompts` (the appended options and option-letter tokens,
over the shared prompt primitives of :mod:`uqmerge.core.prompts`), :mod:`.perturb` (AugMix, system
messages, per-row MC dropout), :mod:`.scoring` (batched forward passes), :mod:`.measures` and
:mod:`.conformal` (the numbers), :mod:`.results`, :mod:`.cache` and :mod:`.api` (``run_uq``,
``uncertainty_of_loaded_model``); the ``uqmerge uq`` command lives in :mod:`uqmerge.cli.uq`.
"""
