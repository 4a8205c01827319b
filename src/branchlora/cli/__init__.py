"""The `branchlora` command line: one small module per subcommand, each calling one library function."""

import typer

from branchlora.cli import bench, evaluate, export, params, predict, pretrain, run

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Multimodal continual instruction tuning: BranchLoRA and the methods it competes with.",
)
app.command("bench")(bench.bench)
app.command("params")(params.params)
app.command("run")(run.run)
app.command("predict")(predict.predict)
app.command("pretrain")(pretrain.pretrain)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
