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


def _usage_error_types() -> tuple[type, ...]:
    """Usage-error classes of every click the installed typer may raise: typer >= 0.2x vendors
    its own copy (``typer._click``), older ones use ``click``."""
    types = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = __import__(name, fromlist=["ClickException"])
        except ImportError:
            continue
        types.append(module.ClickException)
    return tuple(types)


def _one_line_usage_error(err) -> str:
    message = " ".join(err.format_message().split()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "mechkit"
    return f"error: {message} (see '{command} --help')"


def _is_main_rank() -> bool:
    """False only in a torchrun rank other than 0 (read from the environment torchrun sets)."""
    import os

    return os.environ.get("RANK", "0") in ("0", "") or os.environ.get("WORLD_SIZE", "1") in ("1", "")


def main(argv: list[str] | None = None) -> None:
    """The console script: run the app, turn every outcome into an exit code.

    0 success; 1 a check that ran and failed (``verify``, ``demo``); 2 bad input or usage,
    printed as one line on stderr; 130 interrupted.
    """
    import os

    if not _is_main_rank():  # one progress bar under torchrun, rank 0's (tqdm reads this when imported)
        os.environ.setdefault("TQDM_DISABLE", "1")
    from mechkit.errors import MechkitError

    usage_errors = _usage_error_types()
    try:
        # standalone_mode=False: click returns a command's exit code instead of exiting, and
        # raises usage errors, so that they print as one line here.
        code = app(args=argv, prog_name="mechkit", standalone_mode=False)
    except MechkitError as err:
        if _is_main_rank():  # under torchrun every rank raises the same error; rank 0 says it
            typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except usage_errors as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `mechkit` or a bare group: show its help
            typer.echo(err.ctx.get_help())
            sys.exit(0)
        typer.echo(_one_line_usage_error(err), err=True)
        sys.exit(2)
    code = code if isinstance(code, int) else 0
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        typer.echo("aborted", err=True)
    sys.exit(code)


# Feature modules register their commands on `app`.
from mechkit.cli import models as _models  # noqa: E402,F401
from mechkit.cli import artifacts as _artifacts  # noqa: E402,F401
from mechkit.cli import sae as _sae  # noqa: E402,F401
from mechkit.cli import discover as _discover  # noqa: E402,F401
from mechkit.cli import demo as _demo  # noqa: E402,F401
from mechkit.cli import organisms as _organisms  # noqa: E402,F401
from mechkit.cli import patch as _patch  # noqa: E402,F401
from mechkit.cli import probe as _probe  # noqa: E402,F401
