"""``mechkit demo``: the whole workflow on one organism, end to end.

task data → patching overview → EAP-IG discovery → faithfulness curve and robustness →
saved and re-verified circuit artifact + HTML report, all under one output directory.

>>> result = run_demo("chekhov", "mechkit-out")   # doctest: +SKIP
>>> result.circuit_path.name                      # doctest: +SKIP
'chekhov.circuit.json'
"""

import dataclasses
import html
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ORGANISM = "chekhov"


@dataclass
class DemoResult:
    """What one demo run found and wrote."""

    organism: str
    n_prompts: int
    n_edges: int
    n_circuit_edges: int
    nodes: list[str]
    faithfulness: list  # mechkit._types.Faithfulness, one per ablation
    cpr: float
    cmd: float
    curve: object  # mechkit.discovery.Curve
    top_components: list[tuple[str, float]]
    top_heads_patching: list[tuple[str, float]]
    verified: bool
    verify_message: str
    convergence: object = None  # mechkit.discovery.Convergence of the EAP-IG scores (None for other methods)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def circuit_path(self) -> Path:
        return self.files["circuit"]


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block under ``seconds[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = time.perf_counter() - t0


def run_demo(
    organism: str = DEFAULT_ORGANISM,
    out: str | Path = "mechkit-out",
    n_prompts: int = 64,
    seed: int = 0,
    edges: str | int = "auto",
    target: float = 0.9,
    method: str = "eap-ig",
    device: str | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the workflow on ``organism:<organism>`` and write everything to ``out``.

    ``edges="auto"`` keeps the smallest budget of the faithfulness curve whose held-out
    faithfulness reaches ``target``; a count or a percentage ("5%") fixes it instead.
    """
    from mechkit import discovery, patching
    from mechkit._files import write_json
    from mechkit.artifacts import save_circuit, verify_circuit
    from mechkit.models import load_model
    from mechkit.organisms import task as get_task
    from mechkit.viewer import write_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    spec = f"organism:{organism}"
    files: dict[str, Path] = {}
    figures: dict[str, object] = {}  # plotly figures, embedded again in the report

    with _timed(seconds, "load"):
        model = load_model(spec, device=device)
        pairs = get_task(organism).generate(n_prompts, seed=seed, split="test")
        eval_pairs = get_task(organism).generate(n_prompts, seed=seed + 1, split="test")

    with _timed(seconds, "patching"):
        # denoising: which clean activations, patched into the corrupted run, restore the answer
        kw = dict(metric="normalized-logit-diff", direction="denoising", progress=progress)
        resid = patching.get_act_patch_resid_pre(model, pairs, **kw)
        heads = patching.get_act_patch_attn_head_out_all_pos(model, pairs, **kw)
        figures["patching_resid"], figures["patching_heads"] = resid.heatmap(), heads.heatmap()
        files["patching_resid"] = _write_figure(figures["patching_resid"], out / "patching_resid_pre.html")
        files["patching_heads"] = _write_figure(figures["patching_heads"], out / "patching_heads.html")

    with _timed(seconds, "discovery"):
        with warnings.catch_warnings():  # the summary reports the integral check itself
            warnings.simplefilter("ignore", discovery.IntegrationWarning)
            scores = discovery.attribute(model, pairs, method, model_spec=spec, progress=progress)

    with _timed(seconds, "evaluation"):
        # scored on `pairs`, measured on fresh held-out `eval_pairs`
        curve = discovery.faithfulness_curve(model, eval_pairs, scores)
        budget = _budget_from_curve(curve, target) if edges == "auto" else edges
        circuit = scores.select(budget)
        robust = discovery.robustness(model, eval_pairs, circuit)
        # the artifact records the data its faithfulness was measured on, so `verify` can redo it
        circuit = dataclasses.replace(
            circuit,
            task=dict(eval_pairs.task),
            hyperparameters={**circuit.hyperparameters, "scored_on": dict(pairs.task)},
            faithfulness=robust,
        )

    with _timed(seconds, "artifact"):
        files["circuit"] = save_circuit(circuit, out / f"{organism}.circuit.json")
        verdict = verify_circuit(files["circuit"], device=device)
        files["viewer"] = write_html(circuit, out / f"{organism}.circuit.html")
        figures["curve"] = _curve_figure(curve)
        files["curve"] = _write_figure(figures["curve"], out / "faithfulness_curve.html")

    node_scores = sorted(scores.node_dict().items(), key=lambda kv: -abs(kv[1]))
    result = DemoResult(
        organism=organism,
        n_prompts=n_prompts,
        n_edges=len(circuit.edge_names),
        n_circuit_edges=int(circuit.in_circuit.sum()),
        nodes=circuit.nodes,
        faithfulness=list(robust),
        cpr=curve.cpr,
        cmd=curve.cmd,
        curve=curve,
        top_components=node_scores[:5],
        top_heads_patching=[(f"L{c['layer']}{c['head']}", v) for c, v in heads.top(3)],
        verified=bool(verdict.passed),
        verify_message=verdict.reason or "; ".join(verdict.lines()[1:]),
        convergence=scores.convergence,
        files=files,
        seconds=seconds,
    )
    files["report"] = _write_report(result, circuit, figures, out / "report.html")
    files["summary"] = out / "summary.json"
    write_json(out / "summary.json", _summary_dict(result), indent=2)
    return result


def _budget_from_curve(curve, target: float) -> int:
    """Edges kept at the smallest curve budget reaching ``target`` (all edges if none does)."""
    for n, value in zip(curve.n_edges, curve.faithfulness):
        if value >= target:
            return n
    return curve.n_edges[-1]


def _write_figure(fig, path: Path) -> Path:
    # plotly.js (4.6 MB) once, as plotly.min.js beside the figures, not inlined in each file
    fig.write_html(path, include_plotlyjs="directory", full_html=True)
    return path


def _curve_figure(curve):
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(x=[100 * f for f in curve.fractions], y=list(curve.faithfulness), mode="lines+markers",
                   text=[f"{n} edges" for n in curve.n_edges], hovertemplate="%{x}% of edges (%{text}): %{y:.3f}")
    )
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(
        title=f"Faithfulness vs edge budget ({curve.ablation} ablation): CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f}",
        xaxis=dict(title="edges kept (% of graph)", type="log"),
        yaxis=dict(title="normalised faithfulness"),
        template="plotly_white",
    )
    return fig


def _summary_dict(r: DemoResult) -> dict:
    return {
        "organism": r.organism,
        "n_prompts": r.n_prompts,
        "edges": {"graph": r.n_edges, "circuit": r.n_circuit_edges},
        "nodes": r.nodes,
        "faithfulness": [dataclasses.asdict(f) for f in r.faithfulness],
        "cpr": r.cpr,
        "cmd": r.cmd,
        "curve": {"fractions": list(r.curve.fractions), "faithfulness": list(r.curve.faithfulness)},
        "top_components": r.top_components,
        "eap_ig_convergence": None if r.convergence is None else {
            **dataclasses.asdict(r.convergence), "relative_error": r.convergence.relative_error},
        "verified": r.verified,
        "seconds": r.seconds,
        "files": {k: str(v) for k, v in r.files.items()},
    }


def _write_report(r: DemoResult, circuit, figures: dict, path: Path) -> Path:
    """One self-contained offline page: the summary, the figures and the circuit viewer, with
    plotly.js inlined once."""
    from plotly.offline import get_plotlyjs

    from mechkit.viewer import circuit_html

    rows = [
        ("organism", f"organism:{r.organism}"),
        ("prompts", str(r.n_prompts)),
        ("circuit size", f"{r.n_circuit_edges} of {r.n_edges} edges, {len(r.nodes)} nodes"),
        *[(f"faithfulness ({f.ablation})", _fmt_faith(f)) for f in r.faithfulness],
        ("CPR / CMD", f"{r.cpr:.3f} / {r.cmd:.3f}"),
        ("top components", ", ".join(f"{n} ({s:+.2f})" for n, s in r.top_components)),
        *([("EAP-IG integral check", _integral_check(r.convergence))] if r.convergence is not None else []),
        ("verified", "yes" if r.verified else f"NO: {r.verify_message}"),
    ]
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    links = "\n".join(
        f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>'
        for k, p in r.files.items()
        if k != "report"
    )
    titles = {"curve": "Faithfulness curve", "patching_resid": "Activation patching: residual stream",
              "patching_heads": "Activation patching: attention heads"}
    embedded = "\n".join(
        f"<h2>{titles.get(key, key)}</h2>\n" + fig.to_html(include_plotlyjs=False, full_html=False)
        for key, fig in figures.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mechkit report: {html.escape(r.organism)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:4px 12px;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>mechkit report: organism:{html.escape(r.organism)}</h1>
<table>{table}</table>
<h2>Circuit</h2>
{circuit_html(circuit, full_page=False)}
{embedded}
<h2>Files</h2><ul>{links}</ul>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def _integral_check(c) -> str:
    """One line on EAP-IG's completeness check (mechkit.discovery.convergence)."""
    return (f"embedding edges sum to {c.embedding_sum:.3g}, metric change {c.total_effect:.3g} "
            f"({100 * c.relative_error:.0f}% off at ig_steps {c.ig_steps})")


def _fmt_faith(f) -> str:
    ci = f" (95% CI {f.ci_low:.3f} to {f.ci_high:.3f})" if f.ci_low is not None else ""
    return f"{f.value:.3f}{ci}"


def print_summary(r: DemoResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mechkit demo: organism:{r.organism}", show_header=False)
    table.add_row("prompts", str(r.n_prompts))
    table.add_row("circuit size", f"{r.n_circuit_edges} of {r.n_edges} edges ({100 * r.n_circuit_edges / max(r.n_edges, 1):.1f}%), {len(r.nodes)} nodes")
    table.add_row("nodes", " ".join(r.nodes))
    for f in r.faithfulness:
        table.add_row(f"faithfulness ({f.ablation})", _fmt_faith(f))
    table.add_row("CPR / CMD", f"{r.cpr:.3f} / {r.cmd:.3f}")
    table.add_row("top components (EAP-IG)", ", ".join(f"{n} ({s:+.2f})" for n, s in r.top_components))
    table.add_row("top heads (patching)", ", ".join(f"{n} ({s:.2f})" for n, s in r.top_heads_patching))
    if r.convergence is not None:
        table.add_row("EAP-IG integral check", _integral_check(r.convergence))
    table.add_row("verified", "yes" if r.verified else f"NO: {r.verify_message}")
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items()) + f" (total {sum(r.seconds.values()):.1f}s)")
    for key, path in r.files.items():
        table.add_row(f"file: {key}", str(path))
    Console().print(table)
