"""The ``mechkit`` command line.

Each feature's commands live in their own module under ``mechkit/cli/`` and register on
``app``; they are imported at the bottom of this file. Errors mechkit raises on purpose
print as one line on stderr and exit with code 2.
"""

import sys

import typer

app = typer.Typer(
    name="mechkit",
    help="Mechanistic interpretability: hooked models, patching, circuits, SAEs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from mechkit import __version__

        typer.echo(f"mechkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mechkit: find which parts of a transformer carry a behaviour."""


def main() -> None:
    from mechkit.errors import MechkitError

    try:
        app(standalone_mode=False)
    except MechkitError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


# Feature modules register their commands on `app`.
from mechkit.cli import models as _models  # noqa: E402,F401
from mechkit.cli import artifacts as _artifacts  # noqa: E402,F401
from mechkit.cli import sae as _sae  # noqa: E402,F401
from mechkit.cli import discover as _discover  # noqa: E402,F401
from mechkit.cli import demo as _demo  # noqa: E402,F401
from mechkit.cli import organisms as _organisms  # noqa: E402,F401
from mechkit.cli import patch as _patch  # noqa: E402,F401
