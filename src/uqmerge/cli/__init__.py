"""The ``uqmerge`` command line (typer): one module per command group, imported lazily.

Importing this package loads typer, rich and the option types only; each command imports the domain
code it runs (and with it torch, transformers or the zoo) inside its body, so ``uqmerge --help`` and
``uqmerge merge --help`` start quickly. Commands that need an optional extra say which one is missing.

Commands: ``merge`` and ``methods`` (:mod:`.merge`), ``demo`` (:mod:`.demo`), ``run`` (:mod:`.run`),
``search`` (:mod:`.search`), ``uq`` (:mod:`.uq`), ``eval`` (:mod:`.eval`), ``zoo build`` and
``zoo export-lmms-eval`` (:mod:`.zoo`) and ``zoo hetero`` (:mod:`.zoo_hetero`); shared helpers in :mod:`.common`.
"""

from __future__ import annotations

import typer

from uqmerge.cli import demo, merge, run, search, uq, zoo, zoo_hetero
from uqmerge.cli import eval as eval_
from uqmerge.cli.common import reporting_errors

__all__ = ["app", "main"]

app = typer.Typer(
    help="Merge multimodal LLMs fine-tuned from one base, with uncertainty-guided selection (UQ-Merge).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(merge.merge)
app.command()(merge.methods)
app.command()(demo.demo)
app.command()(run.run)
app.command()(search.search)
app.command("uq")(reporting_errors(uq.uq_command))
app.command("eval")(reporting_errors(eval_.eval_command))

zoo_app = typer.Typer(help="The miniature MLLM zoo (synthetic tasks, tiny LLaVA experts).", no_args_is_help=True)
zoo_app.command("build")(reporting_errors(zoo.zoo_build_command))
zoo_app.command("export-lmms-eval")(reporting_errors(zoo.zoo_export_lmms_command))
zoo_app.command("hetero")(reporting_errors(zoo_hetero.zoo_hetero_command))
app.add_typer(zoo_app, name="zoo")


def main() -> None:
    """Entry point for ``python -m uqmerge``."""
    app()
