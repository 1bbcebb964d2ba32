"""Vision-language perturbation uncertainty (UQ) of MLLMs on multiple-choice data.

Modules, in data-flow order: :mod:`.data` (JSONL items, benchmark adapters, ``--data`` specs,
sampling and padding), :mod:`.prompts` (user text, chat template, option-letter tokens),
:mod:`.perturb` (AugMix, system messages, MC dropout), :mod:`.scoring` (batched forward passes),
:mod:`.measures` and :mod:`.conformal` (the numbers), :mod:`.cache`, :mod:`.api` (``run_uq``,
``uncertainty_of_loaded_model``) and :mod:`.command` (``uqmerge uq``).
"""
