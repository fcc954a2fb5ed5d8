"""``mechkit demo``: the whole workflow on a shipped organism."""

import time

import typer

from mechkit.cli import app


@app.command()
def demo(
    organism: str = typer.Option("chekhov", help="which shipped organism to analyse"),
    out: str = typer.Option("mechkit-out", help="output directory"),
    prompts: int = typer.Option(64, help="number of prompt pairs"),
    seed: int = typer.Option(0, help="task seed"),
    edges: str = typer.Option("auto", help="edge budget: a count, a percentage, or 'auto' (smallest reaching --target)"),
    target: float = typer.Option(0.9, help="faithfulness target for --edges auto"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """Task data -> patching -> EAP-IG circuit -> faithfulness -> verified artifact + HTML report."""
    from mechkit.cli._inputs import check_count, check_number, check_out_dir

    # arguments and the output folder are checked before the model is loaded
    check_count(prompts, "--prompts", 2)
    check_number(target, "--target", 0, 1, low_open=True)
    if edges != "auto":
        from mechkit.discovery.select import parse_budget

        parse_budget(edges, 1_000_000)
    check_out_dir(out)

    from mechkit.demo import print_summary, run_demo

    t0 = time.perf_counter()
    budget: str | int = int(edges) if edges.isdigit() else edges
    result = run_demo(organism, out, n_prompts=prompts, seed=seed, edges=budget, target=target, device=device)
    print_summary(result)
    typer.echo(f"done in {time.perf_counter() - t0:.1f}s; open {result.files['report']}")
    if not result.verified:
        raise typer.Exit(1)
