"""``mechkit probe fit|eval|verify|steer``: linear probes from the shell (:mod:`mechkit.probes`).

Prompts come from a task (``--task NAME``, default the organism's own: each clean prompt a
positive, its corrupted twin a negative, probed at the answer position) or from a JSONL file
(``--data FILE``: one ``{"text": ..., "label": 0 or 1}`` per line, probed at the last token;
``fit`` holds out every fourth row of each class, copies the file beside the probe and records
its name, sha256 and the split seed, so ``verify`` re-measures the same held-out rows).
``steer`` measures behaviour, which needs answers: its ``--data`` is a file of prompt pairs, as
``mechkit patch --data`` reads (see :mod:`mechkit.probes.effect`).
"""

from pathlib import Path

import typer

from mechkit.cli import app

probe_app = typer.Typer(help="Linear probes: fit per layer, evaluate, verify and steer with saved probes.",
                        no_args_is_help=True)
app.add_typer(probe_app, name="probe")

_TASK = typer.Option(None, help="task to generate prompts from (default: the organism's own task)")
_DATA = typer.Option(None, help='JSONL of {"text": ..., "label": 0|1} rows (instead of a task)')
_N = typer.Option(200, "--n", help="prompt pairs per split (with a task)")
_MAX_MEMORY = typer.Option(None, "--max-memory", help="working-memory budget, e.g. 2GiB or 0.5 (a share of available "
                           "memory); default: half the available memory, at most 3 GiB on a CPU")


def _task_name(spec: str, task: str | None) -> str:
    from mechkit.errors import DataError

    name = task or (spec.split(":", 1)[1] if spec.startswith("organism:") else None)
    if name is None:
        raise DataError(f"{spec} is not an organism, so it has no task: pass --task NAME or --data FILE.jsonl")
    return name


def _check_common(data: str | None, n: int, n_boot: int, max_memory: str | None):
    from mechkit.cli._inputs import check_count

    check_count(n, "--n", 2)
    check_count(n_boot, "--n-boot", 0)
    if max_memory is not None:
        from mechkit.memory import parse_size

        parse_size(max_memory)
    from mechkit.probes.data import read_labelled

    return read_labelled(data) if data else None


@probe_app.command("fit")
def fit_cmd(
    spec: str = typer.Argument(..., help="model spec, e.g. organism:sandbagging or smollm2-135m"),
    out: str = typer.Option(..., help="where to save the best probe, e.g. cue.probe.json"),
    task: str = _TASK,
    data: str = _DATA,
    layer: list[int] = typer.Option(None, "--layer", help="layer to probe; repeat for several (default: every layer)"),
    site: str = typer.Option("resid_post", help="resid_pre, resid_mid, resid_post, attn_out or mlp_out"),
    hook: list[str] = typer.Option(None, "--hook", help="explicit hook name instead of --layer/--site; repeatable"),
    position: str = typer.Option("answer", help="answer, last or an integer index"),
    method: str = typer.Option("logreg", help="logreg or diff-means"),
    n: int = _N,
    seed: int = typer.Option(0, help="seed of the task prompts (held-out prompts use seed + 1) or of the --data split"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples of the AUROC interval"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
    max_memory: str = _MAX_MEMORY,
) -> None:
    """Fit a probe at each layer on training prompts, score each on held-out prompts, save the best."""
    from mechkit.cli._inputs import check_out_file
    from mechkit.errors import DataError, did_you_mean
    from mechkit.probes.activations import SITES, hook_names
    from mechkit.probes.fit import METHODS

    if method not in METHODS:
        raise DataError(f"unknown method {method!r}; {did_you_mean(method, METHODS)}")
    if site not in SITES:
        raise DataError(f"unknown site {site!r}; {did_you_mean(site, SITES)}")
    if position not in ("answer", "last") and not position.lstrip("-").isdigit():
        raise DataError(f"--position {position!r} not understood: use answer, last or an integer index")
    if hook and layer:
        raise DataError("pass --hook or --layer, not both")
    rows = _check_common(data, n, n_boot, max_memory)
    if rows is None:
        name = _task_name(spec, task)
    check_out_file(out, "--out")

    from mechkit.models import load_model
    from mechkit.probes import Labelled, save_probe, sweep_layers
    from mechkit.probes.activations import check_hooks

    model = load_model(spec, device=device)
    hooks = check_hooks(model, list(hook)) if hook else hook_names(model, list(layer) if layer else None, site)
    if rows is not None:
        from mechkit.probes.data import split_texts

        # an explicit index is probed as given; "answer" means a text's last token
        train, test = split_texts(model, rows.texts, rows.labels, seed, "last" if position == "answer" else position)
        train_spec = {"source": Path(data).name, "source_sha256": rows.sha256, "seed": seed, "split": "train"}
        test_spec = {**train_spec, "split": "test"}
    else:
        from mechkit.tasks import task as get_task

        t = get_task(name)
        train_pairs = t.generate(n, seed=seed, split="train", model=model)
        test_pairs = t.generate(n, seed=seed + 1, split="test", model=model)
        train, test = Labelled.from_pairs(train_pairs, position), Labelled.from_pairs(test_pairs, position)
        train_spec, test_spec = dict(train_pairs.task), dict(test_pairs.task)
    result = sweep_layers(model, train, test, hooks, method=method, n_boot=n_boot, seed=seed, max_memory=max_memory)
    for line in result.lines():
        typer.echo(line)
    best = result.best
    if rows is not None:  # verify re-reads the file beside the artifact, so it travels with it
        from mechkit.artifacts.io import copy_beside

        name = copy_beside(Path(data), Path(out).parent, rows.sha256)
        train_spec, test_spec = {**train_spec, "source": name}, {**test_spec, "source": name}
    task_record = {"train": train_spec, "test": test_spec}
    save_probe(best.probe, out, model, task=task_record,
               metrics={"test": best.test.as_dict(), "train": {"auroc": best.train.auroc},
                        "layers": {r.hook: r.test.auroc for r in result.results}})
    typer.echo(f"wrote {out} ({best.hook}, held-out {best.test})")


@probe_app.command("eval")
def eval_cmd(
    probe: str = typer.Argument(..., help="a saved probe, NAME.probe.json"),
    model_spec: str = typer.Option(None, "--model", help="model spec (default: the one the probe records)"),
    task: str = _TASK,
    data: str = _DATA,
    split: str = typer.Option("test", help="task split to score on: train or test"),
    n: int = _N,
    seed: int = typer.Option(1, help="seed of the task prompts"),
    n_boot: int = typer.Option(1000, "--n-boot", help="bootstrap resamples of the AUROC interval"),
    allow_fingerprint_mismatch: bool = typer.Option(False, help="score on weights other than the probe's"),
    device: str = typer.Option(None, help="cpu, cuda, ..."),
    max_memory: str = _MAX_MEMORY,
) -> None:
    """Score a saved probe on prompts: AUROC with a bootstrap interval."""
    from mechkit.errors import DataError
    from mechkit.probes import Labelled, collect, evaluate_probe, load_probe
    from mechkit.probes.io import check_model

    saved = load_probe(probe)  # a tampered or unreadable probe fails before any model is loaded
    if split not in ("train", "test"):
        raise DataError(f"--split {split!r}: use train or test")
    rows = _check_common(data, n, n_boot, max_memory)
    spec = model_spec or saved.model_spec
    if rows is None:
        name = _task_name(spec, task)

    from mechkit.models import load_model
    from mechkit.probes.activations import check_hooks

    model = load_model(spec, device=device)
    check_model(saved, model, allow_fingerprint_mismatch)
    check_hooks(model, [saved.probe.hook])
    if rows is not None:
        labelled = Labelled.from_texts(model, rows.texts, rows.labels, position=saved.probe.position)
    else:
        from mechkit.tasks import task as get_task

        pairs = get_task(name).generate(n, seed=seed, split=split, model=model)
        labelled = Labelled.from_pairs(pairs, saved.probe.position)
    acts = collect(model, labelled, [saved.probe.hook], max_memory=max_memory)[saved.probe.hook]
    typer.echo(f"{saved.probe.hook} ({saved.probe.method}): {evaluate_probe(saved.probe, acts, labelled.labels, n_boot)}")


@probe_app.command("verify")
def verify_cmd(
    probe: str = typer.Argument(..., help="a saved probe, NAME.probe.json"),
    tolerance: float = typer.Option(0.02, help="largest allowed change of the held-out AUROC"),
    device: str = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Re-check a saved probe: same weights, same held-out AUROC. Exit 1 when it fails."""
    from mechkit.cli._inputs import check_number
    from mechkit.probes import verify_probe

    check_number(tolerance, "--tolerance", 0)
    result = verify_probe(probe, device=device, tolerance=tolerance)
    for line in result.lines():
        typer.echo(line)
    if not result.passed:
        raise typer.Exit(1)


@probe_app.command("steer")
def steer_cmd(
    probe: str = typer.Argument(..., help="a saved probe, NAME.probe.json"),
    alpha: list[float] = typer.Option(None, "--alpha", help="add alpha times the probe's unit direction at its hook "
                                      "(in units of the activation's norm along it); repeat for several"),
    ablate: bool = typer.Option(False, "--ablate", help="also run with the direction projected out"),
    positions: str = typer.Option("all", help="all (every position) or answer (each prompt's answer position)"),
    model_spec: str = typer.Option(None, "--model", help="model spec (default: the one the probe records)"),
    task: str = _TASK,
    data: str = typer.Option(None, help="prompt pairs, CSV or JSONL with clean, corrupted, answer, wrong_answer "
                             "(as patch --data reads), instead of a task"),
    split: str = typer.Option("test", help="task split: train or test"),
    n: int = typer.Option(200, "--n", help="prompt pairs (with a task)"),
    seed: int = typer.Option(1, help="seed of the task prompts"),
    allow_fingerprint_mismatch: bool = typer.Option(False, help="steer weights other than the probe's"),
    device: str = typer.Option(None, help="cpu, cuda, ..."),
) -> None:
    """Steer along a saved probe's direction (and ablate it): the task's two accuracies per alpha."""
    from mechkit.cli._inputs import check_count, check_number
    from mechkit.errors import DataError
    from mechkit.probes import load_probe
    from mechkit.probes.effect import POSITIONS
    from mechkit.probes.io import check_model

    saved = load_probe(probe)  # a tampered or unreadable probe fails before any model is loaded
    alphas = list(alpha or [])
    for a in alphas:
        check_number(a, "--alpha")
    if not alphas and not ablate:
        raise DataError("nothing to run: pass --alpha VALUE (repeatable) and/or --ablate")
    if positions not in POSITIONS:
        raise DataError(f"--positions {positions!r}: use all or answer")
    if split not in ("train", "test"):
        raise DataError(f"--split {split!r}: use train or test")
    check_count(n, "--n")
    spec = model_spec or saved.model_spec
    if data:
        from mechkit.patching.data import check_pairs_file

        check_pairs_file(data)
    else:
        name = _task_name(spec, task)

    from mechkit.models import load_model
    from mechkit.probes.activations import check_hooks
    from mechkit.probes.effect import steering_effect

    model = load_model(spec, device=device)
    check_model(saved, model, allow_fingerprint_mismatch)
    check_hooks(model, [saved.probe.hook])
    if data:
        from mechkit.patching import read_pairs

        pairs, labels = read_pairs(data, model), None
    else:
        from mechkit.tasks import task as get_task

        t = get_task(name)
        pairs, labels = t.generate(n, seed=seed, split=split, model=model), getattr(t, "accuracy_labels", None)
    effect = steering_effect(model, saved.probe, pairs, alphas, ablate=ablate, positions=positions, labels=labels)
    for line in effect.lines():
        typer.echo(line)
