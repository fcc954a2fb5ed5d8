"""``mechkit discover SPEC (--task NAME | --data pairs.csv) --method eap-ig --edges 5% --out DIR``."""

import warnings
from pathlib import Path

import typer

from mechkit.cli import app
from mechkit.errors import DataError, MechkitError


class MissingFeatureError(MechkitError):
    """A part of mechkit this command needs is not installed in this checkout."""


def load_pairs(model, task: str | None, data: Path | None, n: int, seed: int, split: str):
    """Prompt pairs from a registered task or a CSV file (exactly one of them)."""
    if (task is None) == (data is None):
        raise DataError("pass exactly one of --task NAME or --data pairs.csv")
    if task is not None:
        try:
            from mechkit.organisms import task as get_task
        except ImportError:
            raise MissingFeatureError("--task needs mechkit.organisms, which this installation lacks: use --data") from None
        return get_task(task).generate(n, seed=seed, split=split)
    try:
        from mechkit.patching import read_pairs
    except ImportError:
        raise MissingFeatureError("--data needs mechkit.patching.read_pairs, which this installation lacks: use --task") from None
    return read_pairs(data, model)


def save(circuit, out: Path) -> Path | None:
    """Save with mechkit.artifacts when it is available; None when it is not."""
    try:
        from mechkit.artifacts import save_circuit
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return save_circuit(circuit, out / "circuit.json")


@app.command()
def discover(
    spec: str = typer.Argument(..., help="organism:NAME, a checkpoint directory, or a cached pretrained name"),
    task: str = typer.Option(None, help="task name (mechkit.organisms.task), e.g. induction"),
    data: Path = typer.Option(None, help="CSV of prompt pairs (mechkit.patching.read_pairs)"),
    n: int = typer.Option(64, help="number of prompt pairs generated with --task"),
    seed: int = typer.Option(0, help="seed of the generated prompt pairs"),
    split: str = typer.Option("test", help="task split: train or test"),
    method: str = typer.Option("eap-ig", help="eap, eap-ig, eap-ig-activations, exact, acdc or oracle"),
    edges: str = typer.Option("5%", help="edge budget: a count (40) or a percentage (5%)"),
    rule: str = typer.Option("top-n", help="top-n, greedy or threshold"),
    threshold: float = typer.Option(None, help="score threshold for --rule threshold"),
    ablation: str = typer.Option("resample", help="resample, mean or zero"),
    ig_steps: int = typer.Option(5, help="eap-ig / eap-ig-activations interpolation steps"),
    tau: float = typer.Option(0.01, help="acdc threshold on the objective's rise"),
    target: float = typer.Option(0.9, help="oracle faithfulness target"),
    out: Path = typer.Option(None, help="directory to save circuit.json in"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """Discover a circuit, print a summary, and save it."""
    from rich.console import Console
    from rich.table import Table

    from mechkit.discovery import IntegrationWarning, discover as run_discover
    from mechkit.models import load_model

    console = Console()
    with console.status(f"loading {spec}"):
        model = load_model(spec, device=device)
        pairs = load_pairs(model, task, data, n, seed, split)
    options = {"eap-ig": {"ig_steps": ig_steps}, "eap-ig-activations": {"ig_steps": ig_steps}, "acdc": {"tau": tau}, "oracle": {"target": target}}.get(method, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IntegrationWarning)
        circuit = run_discover(
            model, pairs, method, edges, rule=rule, threshold=threshold, ablation=ablation,
            model_spec=spec, progress=True, **options,
        )
    unresolved = [str(w.message) for w in caught if issubclass(w.category, IntegrationWarning)]
    for w in caught:  # anything else is shown as usual
        if not issubclass(w.category, IntegrationWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    table = Table(title=f"mechkit discover {spec}", show_header=False)
    f = circuit.faithfulness[0]
    kept = int(circuit.in_circuit.sum())
    nodes = [n for n in circuit.nodes if n not in ("embed", "logits")]  # forward order
    rows = [
        ("task", f"{circuit.task.get('name', data)} ({len(pairs)} pairs)"),
        ("method", f"{circuit.method} {circuit.hyperparameters}"),
        ("selection", str(circuit.selection)),
        ("edges", f"{kept} of {len(circuit.edge_names)} ({100 * kept / max(1, len(circuit.edge_names)):.1f}%)"),
        ("nodes", ", ".join(nodes) if len(nodes) <= 12 else ", ".join(nodes[:12]) + f", ... ({len(nodes)})"),
        ("faithfulness", f"{f.value:.3f} (95% CI {f.ci_low:.3f} .. {f.ci_high:.3f}, {f.ablation})"),
    ]
    order = circuit.edge_scores.abs().argsort(descending=True).tolist()
    top = [circuit.edge_names[i] for i in order if circuit.in_circuit[i]][:5]
    rows.append(("top edges", ", ".join(f"{e} ({float(circuit.edge_scores[circuit.edge_names.index(e)]):+.3g})" for e in top)))
    rows += [("[yellow]warning", f"[yellow]{message}") for message in unresolved]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if out is not None:
        path = save(circuit, out)
        if path is None:
            console.print("[yellow]not saved: mechkit.artifacts.save_circuit is not available in this installation")
        else:
            console.print(f"saved {path}")
