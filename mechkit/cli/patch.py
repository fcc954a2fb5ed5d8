"""``mechkit patch SPEC --sweep NAME --out DIR``: an activation patching sweep from the shell."""

import typer

from mechkit.cli import app


def organism_pairs(spec: str, n: int, seed: int):
    """The organism's own task prompts, for ``organism:NAME`` specs."""
    from mechkit.errors import DataError

    name = spec.split(":", 1)[1] if spec.startswith("organism:") else None
    if name is None:
        raise DataError(f"{spec} is not an organism, so it has no task: pass --data pairs.csv")
    try:
        from mechkit.organisms import task
    except ImportError:
        raise DataError("mechkit.organisms is not available here: pass --data pairs.csv") from None
    return task(name).generate(n, seed=seed)


@app.command()
def patch(
    spec: str = typer.Argument(..., help="organism:NAME, a checkpoint directory, or a cached pretrained name"),
    sweep: str = typer.Option("head-out-by-pos", help="Sweep name, e.g. resid-pre, head-out-by-pos, block-every"),
    data: str = typer.Option(None, help="CSV/JSONL of prompt pairs (default: the organism's own task)"),
    direction: str = typer.Option("denoising", help="denoising (corrupted run, clean patches) or noising"),
    metric: str = typer.Option("logit-diff", help="logit-diff, normalized-logit-diff, kl or answer-prob"),
    method: str = typer.Option("activation", help="activation (exact) or attribution (first-order)"),
    out: str = typer.Option(..., help="Directory for result.safetensors, result.json and heatmap.html"),
    n: int = typer.Option(32, help="Prompts to generate from the organism's task (without --data)"),
    seed: int = typer.Option(0, help="Seed for the organism's task prompts"),
    top: int = typer.Option(10, help="Print this many top cells"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
    memory_gib: float = typer.Option(2.0, help="Activation memory per stacked forward pass (GiB)"),
) -> None:
    """Patch every cell of a sweep, save the result and an offline HTML heatmap, print the top cells."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from mechkit.errors import HookNameError, did_you_mean
    from mechkit.models import load_model
    from mechkit.patching import activation_patch, attribution_patch, read_pairs

    methods = {"activation": activation_patch, "attribution": attribution_patch}
    if method not in methods:
        raise HookNameError(f"unknown method {method!r}; {did_you_mean(method, methods)}")
    model = load_model(spec, device=device)
    pairs = read_pairs(data, model) if data else organism_pairs(spec, n, seed)
    kwargs = {"progress": None} if method == "activation" else {}
    result = methods[method](model, pairs, sweep, metric, direction=direction, memory_gib=memory_gib, **kwargs)
    path = result.save(out)
    result.heatmap().write_html(Path(path) / "heatmap.html", include_plotlyjs=True)

    ref = result.corrupted_value if direction == "denoising" else result.clean_value
    if method == "attribution":
        ref = 0.0
    table = Table(title=f"{method} patching {sweep} ({direction}, {result.metric}); "
                        f"clean {result.clean_value:.4f}, corrupted {result.corrupted_value:.4f}")
    for d in result.dims:
        table.add_column(d)
    table.add_column(result.metric if method == "activation" else f"d {result.metric}", justify="right")
    for labels, value in result.top(top, relative_to=ref):
        table.add_row(*labels.values(), f"{value:.4f}")
    Console().print(table)
    typer.echo(f"wrote {path / 'result.safetensors'}, {path / 'result.json'}, {path / 'heatmap.html'}")
