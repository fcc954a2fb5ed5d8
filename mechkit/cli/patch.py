"""``mechkit patch SPEC --sweep NAME --out DIR``: an activation patching sweep from the shell."""

import typer

from mechkit.cli import app


def organism_pairs(spec: str, n: int, seed: int, task_name: str | None = None, model=None):
    """Prompts of task ``task_name`` (:mod:`mechkit.tasks`, made with ``model``'s tokenizer for
    real-model tasks), or else the organism's own task for ``organism:NAME`` specs."""
    from mechkit.errors import DataError

    name = task_name or (spec.split(":", 1)[1] if spec.startswith("organism:") else None)
    if name is None:
        raise DataError(f"{spec} is not an organism, so it has no task: pass --task NAME or --data pairs.csv")
    try:
        from mechkit.tasks import task
    except ImportError:
        raise DataError("mechkit.tasks is not available here: pass --data pairs.csv") from None
    return task(name).generate(n, seed=seed, model=model)


def warn_negative_baseline(metric: str, clean_value: float | None) -> None:
    """A clean logit difference below zero: the model prefers the wrong answer on the clean
    prompts, so patching and circuits measure a behaviour it does not have. Warn on stderr."""
    if metric in ("logit-diff", "logit_diff") and clean_value is not None and clean_value < 0:
        typer.echo(
            f"warning: the clean logit difference is {clean_value:.4g} < 0: the model prefers the wrong answer "
            "on the clean prompts; check the answer and wrong_answer columns (or correct_idx, incorrect_idx)",
            err=True,
        )


@app.command()
def patch(
    spec: str = typer.Argument(..., help="organism:NAME, a checkpoint directory, or a cached pretrained name"),
    sweep: str = typer.Option("head-out-by-pos", help="Sweep name, e.g. resid-pre, head-out-by-pos, block-every"),
    data: str = typer.Option(None, help="CSV/JSONL of prompt pairs (default: the organism's own task)"),
    task: str = typer.Option(None, help="Task to generate prompts from (mechkit.tasks), e.g. ioi"),
    direction: str = typer.Option("denoising", help="denoising (corrupted run, clean patches) or noising"),
    metric: str = typer.Option("logit-diff", help="logit-diff, normalized-logit-diff, kl or answer-prob"),
    method: str = typer.Option("activation", help="activation (exact) or attribution (first-order)"),
    out: str = typer.Option(..., help="Directory for result.safetensors, result.json and heatmap.html"),
    n: int = typer.Option(32, "--n", "--n-prompts", help="Prompts to generate from the organism's task (without "
                           "--data; --n-prompts under torchrun, whose parser takes --n for its own options)"),
    seed: int = typer.Option(0, help="Seed for the organism's task prompts"),
    top: int = typer.Option(10, help="Print this many top cells"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
    max_memory: str = typer.Option(
        None, "--max-memory", help="working-memory budget, e.g. 2GiB or 0.5 (a share of available memory); "
        "default: half the available memory, at most 3 GiB on a CPU"),
    memory_gib: float = typer.Option(None, hidden=True, help="deprecated: use --max-memory"),
    backend: str = typer.Option("auto", help="under torchrun: gloo (CPUs), nccl (GPUs) or auto"),
) -> None:
    """Patch every cell of a sweep, save the result and an offline HTML heatmap, print the top cells.

    Under ``torchrun --nproc-per-node N -m mechkit patch ...`` the prompt pairs are shared among
    the N ranks and rank 0 prints and saves."""
    from pathlib import Path

    from mechkit.cli._inputs import check_count, check_number, check_out_dir
    from mechkit.errors import DataError, HookNameError, did_you_mean
    from mechkit.patching._engine import check_direction
    from mechkit.patching._metrics import metric_name
    from mechkit.patching._sweeps import EVERY, get_sweep
    from mechkit.patching.data import check_pairs_file

    # every argument and the output folder are checked before the model is loaded
    methods = ("activation", "attribution")
    if method not in methods:
        raise HookNameError(f"unknown method {method!r}; {did_you_mean(method, methods)}")
    if sweep not in EVERY:
        get_sweep(sweep)
    metric_name(metric)
    check_direction(direction)
    check_count(top, "--top", 0)
    if memory_gib is not None:
        if max_memory is not None:
            raise DataError("pass --max-memory only: --memory-gib is its deprecated spelling in GiB")
        check_number(memory_gib, "--memory-gib", 0, low_open=True)
        typer.echo("warning: --memory-gib is deprecated: use --max-memory (e.g. 2GiB)", err=True)
        max_memory = str(int(memory_gib * 2**30))
    if max_memory is not None:
        from mechkit.memory import parse_size

        parse_size(max_memory)
    out_dir = check_out_dir(out, files=("result.safetensors", "result.json", "heatmap.html"))
    if data:
        check_pairs_file(data)
    else:
        check_count(n, "--n")
        if task is None and not spec.startswith("organism:"):
            raise DataError(f"{spec} is not an organism, so it has no task: pass --task NAME or --data pairs.csv")

    from mechkit import distributed

    distributed.resolve_backend(backend, device)
    with distributed.process_group(backend, device):
        _patch(spec, sweep, data, task, direction, metric, method, out_dir, n, seed, top,
               distributed.device_for_rank(device), max_memory)


def _patch(spec, sweep, data, task, direction, metric, method, out_dir, n, seed, top, device, max_memory) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from mechkit import distributed
    from mechkit.models import load_model
    from mechkit.patching import activation_patch, attribution_patch, read_pairs

    model = load_model(spec, device=device)
    pairs = read_pairs(data, model) if data else organism_pairs(spec, n, seed, task, model)
    kwargs = {"progress": None} if method == "activation" else {}
    run = activation_patch if method == "activation" else attribution_patch
    result = run(model, pairs, sweep, metric, direction=direction, max_memory=max_memory, **kwargs)
    if not distributed.is_main():
        return
    path = result.save(out_dir)
    result.heatmap().write_html(Path(path) / "heatmap.html", include_plotlyjs=True)
    warn_negative_baseline(result.metric, result.clean_value)

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
