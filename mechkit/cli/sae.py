"""``mechkit sae cache|train|eval|features``: sparse autoencoders from the command line."""

import json

import typer

from mechkit.cli import app

sae_app = typer.Typer(help="Sparse autoencoders: cache activations, train, evaluate, inspect features.",
                      no_args_is_help=True)
app.add_typer(sae_app, name="sae")

_SOURCE = typer.Option("random", help="task:NAME, tokens:PATH (safetensors), text:PATH or random")
_N = typer.Option(256, "--n", "--n-prompts", help="number of prompts / token rows (--n-prompts under torchrun, "
                  "whose parser takes --n for its own options)")


@sae_app.command("cache")
def cache_cmd(
    spec: str = typer.Argument(..., help="model spec, e.g. organism:chekhov"),
    out: str = typer.Argument(..., help="cache directory (rerun to resume)"),
    hook: list[str] = typer.Option(..., "--hook", help="hook to store; repeat for several"),
    source: str = _SOURCE,
    n: int = _N,
    seed: int = typer.Option(0),
    split: str = typer.Option("train"),
    batch_size: int = typer.Option(32),
    shard_tokens: int = typer.Option(65536, help="tokens per shard (bounds memory)"),
    dtype: str = typer.Option("float32"),
    skip_first: bool = typer.Option(False, help="drop position 0 (BOS)"),
    device: str = typer.Option(None),
    max_memory: str = typer.Option(
        None, "--max-memory", help="working memory of a forward pass, e.g. 2GiB or 0.5 (a share of available "
        "memory); fewer sequences run at once when a batch does not fit; default: half the available memory, "
        "at most 3 GiB on a CPU"),
    backend: str = typer.Option("auto", help="under torchrun: gloo (CPUs), nccl (GPUs) or auto"),
) -> None:
    """Store activations of HOOKs for a token source (each torchrun rank writes its own shards)."""
    from mechkit.cli._inputs import check_count, check_out_dir
    from mechkit.errors import DataError, did_you_mean
    from mechkit.sae.cache import _DTYPES
    from mechkit.sae.data import check_source

    if dtype not in _DTYPES:
        raise DataError(f"dtype {dtype!r} not supported; {did_you_mean(dtype, _DTYPES)}")
    check_count(n, "--n")
    check_count(batch_size, "--batch-size")
    check_count(shard_tokens, "--shard-tokens")
    check_out_dir(out, "OUT")
    check_source(source)
    if max_memory is not None:
        from mechkit.memory import parse_size

        parse_size(max_memory)

    from mechkit import distributed
    from mechkit.models import load_model
    from mechkit.sae import ActivationCache, write_cache
    from mechkit.sae.data import load_source

    distributed.resolve_backend(backend, device)
    with distributed.process_group(backend, device):
        model = load_model(spec, device=distributed.device_for_rank(device))
        data = load_source(model, source, n=n, seed=seed, split=split)
        distributed.agree_on_inputs(model, data)
        path = write_cache(model, data, out, hook, batch_size=batch_size, shard_tokens=shard_tokens, dtype=dtype,
                           skip_first=skip_first, max_memory=max_memory)
        distributed.barrier()  # the cache is whole once every rank has written its shards
        if not distributed.is_main():
            return
    cache = ActivationCache(path)
    for h in hook:
        typer.echo(f"{h}: {cache.n_tokens(h):,} tokens x {cache.d(h)} in {len(cache.shards(h))} shards -> {path}")


@sae_app.command("train")
def train_cmd(
    cache: str = typer.Argument(..., help="activation cache directory"),
    hook: str = typer.Argument(..., help="hook to train on"),
    out: str = typer.Argument(..., help="output directory (SAELens format); rerun to resume"),
    architecture: str = typer.Option("topk", "--arch", help="standard, topk, batchtopk, jumprelu, ..."),
    expansion: int = typer.Option(8, help="d_sae = expansion * d_in"),
    d_sae: int = typer.Option(None),
    k: int = typer.Option(32, help="active features per token (topk family)"),
    sparsity: float = typer.Option(None, help="l1 (standard) or l0 (jumprelu) coefficient"),
    steps: int = typer.Option(1000),
    batch_size: int = typer.Option(4096),
    lr: float = typer.Option(3e-4),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    autocast: bool = typer.Option(None, "--autocast/--no-autocast", help="bf16 autocast (default: on for CUDA)"),
    checkpoint_every: int = typer.Option(0, help="steps between checkpoints (0: none)"),
    init: str = typer.Option("auto", help="auto (data for the topk family), data, or sae_lens"),
    option: list[str] = typer.Option([], help="extra SAELens config field, KEY=JSON_VALUE; repeatable"),
    backend: str = typer.Option("auto", help="under torchrun: gloo (CPUs), nccl (GPUs) or auto"),
) -> None:
    """Train an SAE with SAELens's SAETrainer on cached activations.

    Under ``torchrun --nproc-per-node N -m mechkit sae train ...`` it trains with
    DistributedDataParallel, each rank taking an equal share of every batch; rank 0 writes
    checkpoints and the SAE, and ``torchrun --max-restarts K`` resumes from the last checkpoint."""
    from mechkit.cli._inputs import check_out_dir
    from mechkit.errors import DataError
    from mechkit.sae import TrainConfig, train_sae

    options = {}
    for item in option:
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"--option {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except (ValueError, RecursionError):
            options[key] = value
    cfg = TrainConfig(architecture=architecture, expansion=expansion, d_sae=d_sae, k=k, sparsity_coefficient=sparsity,
                      steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=device, autocast=autocast,
                      checkpoint_every=checkpoint_every, init=init, options=options)
    check_out_dir(out, "OUT")
    from mechkit import distributed

    distributed.resolve_backend(backend, device)
    with distributed.process_group(backend, device):
        sae = train_sae(cache, hook, out, cfg)
        if distributed.is_main():
            typer.echo(f"trained {architecture} SAE d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} -> {out}")


@sae_app.command("eval")
def eval_cmd(
    spec: str = typer.Argument(..., help="model spec"),
    sae_dir: str = typer.Argument(..., help="SAE directory (mechkit or SAELens format)"),
    hook: str = typer.Option(None, help="hook to splice at (default: the SAE's recorded hook)"),
    source: str = _SOURCE,
    n: int = _N,
    seed: int = typer.Option(1),
    split: str = typer.Option("test"),
    skip_first: bool = typer.Option(False),
    json_out: str = typer.Option(None, "--json", help="also write the numbers to this JSON file"),
    device: str = typer.Option(None),
) -> None:
    """Explained variance, L0, dead features, CE loss recovered and KL with the SAE spliced in."""
    from mechkit.cli._inputs import check_count, check_out_file
    from mechkit.sae.data import check_source
    from mechkit.sae.io import check_sae_dir

    check_count(n, "--n")
    if json_out:
        check_out_file(json_out, "--json")
    check_source(source)
    check_sae_dir(sae_dir)

    from rich.console import Console

    from mechkit.models import load_model
    from mechkit.sae import eval_table, evaluate_sae, load_sae
    from mechkit.sae.data import load_source

    model = load_model(spec, device=device)
    sae = load_sae(sae_dir, device=model.cfg.device)
    data = load_source(model, source, n=n, seed=seed, split=split)
    result = evaluate_sae(model, sae, data, hook=hook, skip_first=skip_first, progress=True)
    Console().print(eval_table(result, title=f"{sae_dir} on {spec}"))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(result.to_dict(), f, indent=1)


@sae_app.command("features")
def features_cmd(
    spec: str = typer.Argument(..., help="model spec"),
    sae_dir: str = typer.Argument(..., help="SAE directory"),
    source: str = _SOURCE,
    n: int = _N,
    seed: int = typer.Option(1),
    split: str = typer.Option("test"),
    top: int = typer.Option(10, help="features to list (most frequently active)"),
    html: str = typer.Option(None, help="write a self-contained HTML dashboard here"),
    device: str = typer.Option(None),
) -> None:
    """List the most active features with their top contexts; optionally write an HTML dashboard."""
    from mechkit.cli._inputs import check_count, check_out_file
    from mechkit.sae.data import check_source
    from mechkit.sae.io import check_sae_dir

    check_count(n, "--n")
    check_count(top, "--top", 0)
    if html:
        check_out_file(html, "--html")
    check_source(source)
    check_sae_dir(sae_dir)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mechkit.models import load_model
    from mechkit.sae import feature_stats, load_sae
    from mechkit.sae.data import load_source

    model = load_model(spec, device=device)
    sae = load_sae(sae_dir, device=model.cfg.device)
    data = load_source(model, source, n=n, seed=seed, split=split)
    stats = feature_stats(model, sae, data)
    features = stats.most_frequent(top)
    names = [stats.node_name(f) for f in features]
    table = Table(title=escape(f"top features of {sae_dir}"))
    # feature ids are never cut; the text columns wrap instead
    table.add_column("feature", no_wrap=True, min_width=max(map(len, names), default=7))
    table.add_column("frequency", no_wrap=True)
    table.add_column("max act", no_wrap=True)
    table.add_column("top context", overflow="fold")
    table.add_column("top logits", overflow="fold")
    for f, name in zip(features, names):
        table.add_row(  # token text is data, not Rich markup: "[[token]]" must print as is
            escape(name), f"{stats.frequency[f]:.4f}", f"{stats.max_act[f]:.3g}",
            escape(stats.context_text(model, f, 0)), escape(" ".join(stats.top_logit_tokens(model, f, 5))),
        )
    Console().print(table)
    if html:
        from mechkit.sae import write_dashboard

        write_dashboard(model, sae, stats, html)
        typer.echo(f"dashboard -> {html}")
