"""The `stabmon` command line: a thin typer shell over library functions.

Each subcommand lives in its own module and imports its heavy dependencies
(torch, FastAPI, SQLAlchemy) inside the command, so `stabmon --help` stays fast and
a collector-only install never needs torch.
"""

import typer

app = typer.Typer(
    name="stabmon",
    help="Divergence-detection monitoring for LLM training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommands register themselves here, one line each (keep them sorted).
from stabmon_cli import backtest  # noqa: E402

app.command("backtest")(backtest.backtest_cmd)
from stabmon_cli import demo  # noqa: E402

app.command("demo")(demo.demo_cmd)
from stabmon_cli import db  # noqa: E402

app.add_typer(db.app, name="db")
from stabmon_cli import import_  # noqa: E402

app.command("import")(import_.import_cmd)
from stabmon_cli import project  # noqa: E402

app.add_typer(project.app, name="project")
from stabmon_cli import serve  # noqa: E402

app.command("serve")(serve.serve_cmd)
from stabmon_cli import sweep  # noqa: E402

app.command("sweep")(sweep.sweep_cmd)
from stabmon_cli import token  # noqa: E402

app.add_typer(token.app, name="token")
from stabmon_cli import train  # noqa: E402

app.command("train")(train.train_cmd)


def main() -> None:
    app()
