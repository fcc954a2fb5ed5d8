"""``mechkit discover SPEC (--task NAME | --data pairs.csv) --method eap-ig --edges 5% --out DIR``."""

import dataclasses
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
            from mechkit.tasks import task as get_task
        except ImportError:
            raise MissingFeatureError("--task needs mechkit.tasks, which this installation lacks: use --data") from None
        return get_task(task).generate(n, seed=seed, split=split, model=model)  # real-model tasks read its tokenizer
    try:
        from mechkit.patching import read_pairs
    except ImportError:
        raise MissingFeatureError("--data needs mechkit.patching.read_pairs, which this installation lacks: use --task") from None
    return read_pairs(data, model)


def save(circuit, out: Path, data: Path | None = None) -> tuple[Path, str | None] | None:
    """Save with mechkit.artifacts when it is available: the artifact's path and the name its
    prompt file was recorded under; None when mechkit.artifacts is not available.

    The prompt file ``data`` is copied next to the artifact first (``verify`` reads it there)
    and the artifact records the copy's name (see :func:`mechkit.artifacts.io.copy_beside`)."""
    try:
        from mechkit.artifacts import save_circuit
        from mechkit.artifacts.io import copy_beside
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    name = None
    if data is not None:
        name = copy_beside(Path(data), out, circuit.task.get("source_sha256"))
        circuit = dataclasses.replace(circuit, task={**circuit.task, "source": name})
    return save_circuit(circuit, out / "circuit.json"), name


def check_arguments(method: str, edges: str, rule: str, threshold: float | None, ablation: str,
                    ig_steps: int, tau: float, target: float) -> None:
    """Refuse a bad method, edge budget, rule, ablation or hyperparameter before any work."""
    from mechkit.cli._inputs import check_count, check_number
    from mechkit.discovery import METHODS
    from mechkit.discovery.api import SELECTING
    from mechkit.discovery.forward import ABLATIONS
    from mechkit.discovery.scores import RULES
    from mechkit.discovery.select import SelectionError, parse_budget
    from mechkit.errors import did_you_mean

    if method not in METHODS and method not in SELECTING:
        raise DataError(f"unknown method {method!r}; {did_you_mean(method, [*METHODS, *SELECTING])}")
    if rule not in RULES:
        raise SelectionError(f"unknown selection rule {rule!r}: use one of {', '.join(RULES)}")
    if rule == "threshold" and threshold is None:
        raise SelectionError("--rule threshold needs --threshold VALUE")
    check_number(threshold, "--threshold")
    parse_budget(edges, 1_000_000)
    if ablation not in ABLATIONS:
        raise DataError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    check_count(ig_steps, "--ig-steps")
    check_number(tau, "--tau", 0)
    check_number(target, "--target", 0, 1, low_open=True)


def clean_baseline_warning(model, pairs, batch: int = 32) -> None:
    """Warn (stderr) when the mean clean logit difference is negative: the model prefers the
    wrong answer on the clean prompts, so a circuit for the behaviour means little."""
    import torch

    from mechkit.cli.patch import warn_negative_baseline
    from mechkit.metrics import logit_diff

    values = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            part = pairs[i : i + batch]
            values.append(logit_diff(model(part.clean.to(model.cfg.device)), part).float().cpu())
    warn_negative_baseline("logit-diff", float(torch.cat(values).mean()))


@app.command()
def discover(
    spec: str = typer.Argument(..., help="organism:NAME, a checkpoint directory, or a cached pretrained name"),
    task: str = typer.Option(None, help="task name (mechkit.organisms.task), e.g. induction"),
    data: Path = typer.Option(None, help="CSV of prompt pairs (mechkit.patching.read_pairs)"),
    n: int = typer.Option(64, "--n", "--n-prompts", help="number of prompt pairs generated with --task "
                           "(--n-prompts under torchrun, whose parser takes --n for its own options)"),
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
    max_memory: str = typer.Option(
        None, "--max-memory", help="working-memory budget, e.g. 6GB or 0.5 (a share of available memory); "
        "default: half the available memory, at most 3 GiB on a CPU"),
    backend: str = typer.Option("auto", help="under torchrun: gloo (CPUs), nccl (GPUs) or auto"),
) -> None:
    """Discover a circuit, print a summary, and save it.

    Under ``torchrun --nproc-per-node N -m mechkit discover ...`` the prompt pairs are shared
    among the N ranks and rank 0 prints and saves."""
    from mechkit.cli._inputs import check_count, check_out_dir

    # every argument and the output folder are checked before the model is loaded
    if task is None and data is None and spec.startswith("organism:"):
        task = spec[len("organism:"):]  # an organism's spec implies its task
    if (task is None) == (data is None):
        raise DataError("pass exactly one of --task NAME or --data pairs.csv (an organism:NAME spec implies its task)")
    check_arguments(method, edges, rule, threshold, ablation, ig_steps, tau, target)
    check_count(n, "--n")
    if max_memory is not None:
        from mechkit.memory import parse_size

        parse_size(max_memory)
    if out is not None:
        check_out_dir(out, files=("circuit.json",))
    if data is not None:
        try:
            from mechkit.patching.data import check_pairs_file
        except ImportError:
            check_pairs_file = None
        if check_pairs_file is not None:
            check_pairs_file(data)

    from mechkit import distributed

    distributed.resolve_backend(backend, device)
    with distributed.process_group(backend, device):
        _discover(spec, task, data, n, seed, split, method, edges, rule, threshold, ablation, ig_steps, tau, target,
                  out, distributed.device_for_rank(device), max_memory)


def _discover(spec, task, data, n, seed, split, method, edges, rule, threshold, ablation, ig_steps, tau, target,
              out, device, max_memory) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mechkit import distributed
    from mechkit.discovery import IntegrationWarning, discover as run_discover
    from mechkit.models import load_model

    main = distributed.is_main()
    console = Console(quiet=not main)
    with console.status(f"loading {spec}"):
        model = load_model(spec, device=device)
        pairs = load_pairs(model, task, data, n, seed, split)
    if main:
        clean_baseline_warning(model, pairs)
    options = {"eap-ig": {"ig_steps": ig_steps}, "eap-ig-activations": {"ig_steps": ig_steps}, "acdc": {"tau": tau}, "oracle": {"target": target}}.get(method, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IntegrationWarning)
        circuit = run_discover(
            model, pairs, method, edges, rule=rule, threshold=threshold, ablation=ablation,
            model_spec=spec, progress=True, max_memory=max_memory, **options,
        )
    unresolved = [str(w.message) for w in caught if issubclass(w.category, IntegrationWarning)]
    for w in caught:  # anything else is shown as usual
        if main and not issubclass(w.category, IntegrationWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    table = Table(title=f"mechkit discover {spec}", show_header=False)
    f = circuit.faithfulness[0]
    kept = int(circuit.in_circuit.sum())
    nonzero = int((circuit.edge_scores != 0).sum())
    budget = circuit.selection.get("n")
    nodes = [n for n in circuit.nodes if n not in ("embed", "logits")]  # forward order
    rows = [
        ("task", f"{circuit.task.get('name', data)} ({len(pairs)} pairs)"),
        ("method", f"{circuit.method} {circuit.hyperparameters}"),
        ("selection", str(circuit.selection)),
        ("edges", f"{kept} of {len(circuit.edge_names)} ({100 * kept / max(1, len(circuit.edge_names)):.1f}%); "
                  f"{nonzero} score non-zero"),
        ("nodes", ", ".join(nodes) if len(nodes) <= 12 else ", ".join(nodes[:12]) + f", ... ({len(nodes)})"),
        ("faithfulness", f"{f.value:.3f} (95% CI {f.ci_low:.3f} .. {f.ci_high:.3f}, {f.ablation})"),
    ]
    order = circuit.edge_scores.abs().argsort(descending=True).tolist()
    top = [circuit.edge_names[i] for i in order if circuit.in_circuit[i]][:5]
    rows.append(("top edges", ", ".join(f"{e} ({float(circuit.edge_scores[circuit.edge_names.index(e)]):+.3g})" for e in top)))
    if isinstance(budget, int) and budget > nonzero:
        unresolved.append(f"the budget of {budget} edges is more than the {nonzero} edges with a non-zero score: "
                          "zero-score edges are never selected, so the circuit is smaller than asked")
    for key, value in rows:
        table.add_row(key, escape(value))
    for message in unresolved:
        table.add_row("warning", escape(message), style="yellow")
    console.print(table)
    if out is not None and main:
        saved = save(circuit, out, data)
        if saved is None:
            console.print("[yellow]not saved: mechkit.artifacts.save_circuit is not available in this installation")
        else:
            path, name = saved
            console.print(f"saved {path}" + (f" with its prompts as {path.parent / name}" if name else ""))
