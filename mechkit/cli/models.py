"""``mechkit info SPEC``."""

import typer

from mechkit.cli import app


@app.command()
def info(
    spec: str = typer.Argument(..., help="organism:NAME, a checkpoint directory, or a cached pretrained name"),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)"),
) -> None:
    """Print a model's architecture, parameter count, components and fingerprint."""
    from rich.console import Console
    from rich.table import Table

    from mechkit.models import components, fingerprint, load_model

    model = load_model(spec, device=device)
    cfg = model.cfg
    comps = components(model)
    kinds = {k: sum(c.kind == k for c in comps) for k in ("head", "mlp")}
    table = Table(title=f"mechkit info {spec}", show_header=False)
    rows = [
        ("architecture", str(cfg.original_architecture or "HookedTransformer")),
        ("layers x heads", f"{cfg.n_layers} x {cfg.n_heads}"),
        ("d_model / d_head / d_mlp", f"{cfg.d_model} / {cfg.d_head} / {cfg.d_mlp}"),
        ("vocab / context", f"{cfg.d_vocab} / {cfg.n_ctx}"),
        ("normalization / positions", f"{cfg.normalization_type} / {cfg.positional_embedding_type}"),
        ("parameters", f"{sum(p.numel() for p in model.parameters()):,}"),
        ("components", f"{len(comps)} ({kinds['head']} heads, {kinds['mlp']} MLPs)"),
        ("device / dtype", f"{cfg.device} / {cfg.dtype}"),
        ("fingerprint", fingerprint(model)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
