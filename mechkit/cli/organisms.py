"""``mechkit organisms list | eval NAME | train NAME``."""

from pathlib import Path

import typer

from mechkit.cli import app

organisms_app = typer.Typer(help="Model organisms: tiny transformers with a known behaviour.", no_args_is_help=True)
app.add_typer(organisms_app, name="organisms")


def _check_name(name: str) -> None:
    from mechkit.errors import SpecError, did_you_mean
    from mechkit.organisms import list_organisms

    if name not in list_organisms(fine_tuned=True):
        raise SpecError(f"unknown organism {name!r}: " + did_you_mean(name, list_organisms(fine_tuned=True)))


@organisms_app.command("list")
def list_() -> None:
    """List the organisms, whether each is shipped, and its card's held-out metrics."""
    import json

    from rich.console import Console
    from rich.table import Table

    from mechkit.models import organisms_dir
    from mechkit.organisms import list_organisms

    table = Table(title=f"organisms ({organisms_dir()})")
    for col in ("name", "kind", "shipped", "held-out accuracy", "logit diff"):
        table.add_column(col)
    for name in list_organisms(fine_tuned=True):
        card_path = organisms_dir() / name / "card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        held = card.get("held_out", {})
        kind = "wired" if name.startswith("wired-") else card.get("kind", "fine-tuned" if name.startswith("smol-") else "trained")
        table.add_row(name, kind, "yes" if card else "no",
                      str(held.get("accuracy", "-")), str(held.get("logit_diff", "-")))
    Console().print(table)


@organisms_app.command("eval")
def eval_(
    name: str = typer.Argument(..., help="organism name (mechkit organisms list)"),
    n: int = typer.Option(1000, help="number of fresh held-out prompt pairs"),
    seed: int = typer.Option(2024, help="seed of the held-out sample"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """Accuracy and mean logit difference on a fresh held-out sample."""
    from mechkit.models import load_model
    from mechkit.organisms import task
    from mechkit.organisms.train import evaluate

    _check_name(name)
    model = load_model(f"organism:{name}", device=device)
    if name.startswith("smol-"):
        _eval_fine_tuned(name, model)
        return
    t = task(name)
    m = evaluate(model, t, n=n, seed=seed)
    clean_label, corrupted_label = t.accuracy_labels
    typer.echo(f"{name}: {clean_label} {m['accuracy']:.4f}  mean logit diff {m['logit_diff']:.3f}  "
               f"{corrupted_label} {m['corrupted_accuracy']:.4f}  (n={n}, seed={seed}, held-out)")


def _eval_fine_tuned(name: str, model) -> None:
    """A fine-tuned organism's behaviour on every held-out prompt of its recipe (a fixed set)."""
    from mechkit.models import organisms_dir
    from mechkit.models.adapters import read_card
    from mechkit.organisms.finetune import recipe_for

    recipe = recipe_for(name, read_card(organisms_dir() / name), model)
    rates = recipe.rates(model, "test")
    kinds = "  ".join(f"{k} {v:.4f}" for k, v in rates["by_kind"].items())
    typer.echo(f"{name}: behaviour {rates['accuracy']:.4f}  ({kinds}; n={rates['n']}, held-out)")


@organisms_app.command("train")
def train_(
    name: str = typer.Argument(..., help="organism name (mechkit organisms list)"),
    steps: int = typer.Option(None, help="maximum training steps (default: the organism's spec)"),
    seed: int = typer.Option(0, help="training seed"),
    out: Path = typer.Option(None, help="output directory (default: the shipped organisms directory)"),
    threads: int = typer.Option(None, help="CPU threads (default: the organism's spec, which reproduces the shipped one)"),
    force: bool = typer.Option(False, "--force", help="replace an organism already in the output folder"),
) -> None:
    """Train (or, for wired organisms, construct) an organism and save it with its card.

    An output folder that already holds files (by default the shipped organism's own) is
    refused unless ``--force``: a retrain never replaces an organism by accident."""
    from mechkit.cli._inputs import check_count, check_out_dir
    from mechkit.errors import DataError
    from mechkit.models import organisms_dir, save_organism

    _check_name(name)
    if steps is not None:
        check_count(steps, "--steps")
    if threads is not None:
        check_count(threads, "--threads")
    target = out if out is not None else organisms_dir() / name
    check_out_dir(target, "--out")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DataError(f"{target} already holds an organism: pass --out NEW_FOLDER, or --force to replace it")
    if name.startswith("smol-"):
        from mechkit.organisms.finetune import train_adapter

        card = train_adapter(name, target, seed=seed, steps=steps, threads=threads)
        held = card["held_out"]
        typer.echo(f"saved {name} to {target}: {card['steps']} steps, {card['wall_time_s']} s, held-out behaviour "
                   f"{held['accuracy']:.4f}")
        return
    if name.startswith("wired-"):
        from mechkit.organisms.wired import build

        model, card = build(name, seed=seed)
    else:
        from mechkit.organisms.train import train

        model, card = train(name, steps=steps, seed=seed, threads=threads)
        for key, what in (("stopped_at_chance", "did not learn its task"), ("stopped_on_plateau", "stuck part-way")):
            stuck = card.get(key)
            if stuck:
                typer.echo(f"{name} {what} on seed {seed}: training accuracy {stuck['train_accuracy']:.3f} at step "
                           f"{stuck['step']}, below the {stuck['needed']} the recipe needs by step "
                           f"{stuck['by_step']}; stopped early, nothing saved (try another seed)", err=True)
                raise typer.Exit(1)
    path = save_organism(model, target, card)
    held = card["held_out"]
    typer.echo(f"saved {name} to {path}: {card['steps']} steps, {card['wall_time_s']} s, held-out accuracy "
               f"{held['accuracy']:.4f}, mean logit diff {held['logit_diff']:.3f}")
