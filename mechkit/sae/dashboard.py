"""A self-contained, offline HTML page of an SAE's features (plotly.js inlined once).

>>> write_dashboard(model, sae, feature_stats(model, sae, tokens), "features.html")  # doctest: +SKIP

Per feature: its node name, frequency and max activation, its top-activating contexts with each
token shaded by the feature's activation there, a histogram of its nonzero activations, and the
tokens whose logits it raises and lowers most (decoder direction times unembedding).
"""

import html
import os
from pathlib import Path

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from mechkit.sae.features import FeatureStats

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}
.feature{border:1px solid #ccc;border-radius:6px;padding:12px;margin:16px 0}
.ctx{font-family:monospace;margin:2px 0;white-space:pre-wrap}
.tok{padding:1px 2px;border-radius:2px}
.cols{display:flex;gap:24px;flex-wrap:wrap}
table{border-collapse:collapse}td{padding:1px 8px}
.pos{color:#064}.neg{color:#a00}
"""


def _contexts_html(model: HookedTransformer, stats: FeatureStats, acts_rows: dict, feature: int) -> str:
    out = []
    peak = max(float(stats.max_act[feature]), 1e-12)
    for row, pos, act in stats.contexts(feature):
        acts = acts_rows[row]
        lo = max(0, pos - 12)
        hi = min(int(stats.lengths[row]), pos + 4)
        spans = []
        for p in range(lo, hi):
            word = html.escape(model.to_single_str_token(int(stats.tokens[row, p])))
            a = float(acts[p, feature])
            alpha = min(1.0, max(0.0, a / peak))
            border = ";outline:1px solid #c60" if p == pos else ""
            spans.append(f'<span class="tok" title="{a:.3g}" style="background:rgba(255,140,0,{alpha:.2f}){border}">'
                         f"{word}</span>")
        out.append(f'<div class="ctx">{act:.3g} &nbsp; {" ".join(spans)}</div>')
    return "\n".join(out) or "<i>never active on these tokens</i>"


def _histogram(stats: FeatureStats, feature: int, first: bool) -> str:
    import plotly.graph_objects as go

    n_bins = stats.hist.shape[1]
    width = float(stats.max_act[feature]) / n_bins
    centers = [(i + 0.5) * width for i in range(n_bins)]
    fig = go.Figure(go.Bar(x=centers, y=stats.hist[feature].tolist(), marker_color="#e67e22"))
    fig.update_layout(width=420, height=220, margin=dict(l=30, r=10, t=24, b=30), title="nonzero activations",
                      bargap=0.05)
    return fig.to_html(full_html=False, include_plotlyjs=first)


def _logits_html(model: HookedTransformer, stats: FeatureStats, feature: int, k: int = 8) -> str:
    w = stats.logit_weights[feature]
    rows = []
    for sign, cls in ((1, "pos"), (-1, "neg")):
        vals, idx = (sign * w).topk(min(k, len(w)))
        cells = "".join(
            f'<tr><td class="{cls}">{html.escape(model.to_single_str_token(int(t)))}</td><td>{sign * float(v):+.3f}</td></tr>'
            for v, t in zip(vals, idx)
        )
        rows.append(f"<table><caption>{'raises' if sign > 0 else 'lowers'}</caption>{cells}</table>")
    return "".join(rows)


@torch.no_grad()
def write_dashboard(
    model: HookedTransformer,
    sae: SAE,
    stats: FeatureStats,
    path: str | os.PathLike,
    features: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write the dashboard for ``features`` (default: the 20 most frequent) to ``path``."""
    features = features if features is not None else stats.most_frequent(20)
    rows_needed = sorted({r for f in features for r, _, _ in stats.contexts(f)})
    device = model.cfg.device
    acts_rows = {}
    if rows_needed:
        batch = stats.tokens[rows_needed].to(device)
        _, cache = model.run_with_cache(batch, names_filter=[stats.hook])
        feats = sae.to(device).encode(cache[stats.hook]).float().cpu()
        acts_rows = {r: feats[i] for i, r in enumerate(rows_needed)}
    title = title or f"SAE features at {stats.hook}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>{sae.cfg.d_sae} features, d_in {sae.cfg.d_in}; {len(stats.tokens)} rows evaluated.</p>"]
    for i, f in enumerate(features):
        parts.append(
            f'<div class="feature" id="f{f}"><h2>{html.escape(stats.node_name(f))}</h2>'
            f"<p>frequency {float(stats.frequency[f]):.4f} &middot; max activation {float(stats.max_act[f]):.4g}</p>"
            f'<div class="cols"><div>{_histogram(stats, f, first=i == 0)}</div>'
            f"<div>{_logits_html(model, stats, f)}</div></div>"
            f"<h3>top contexts</h3>{_contexts_html(model, stats, acts_rows, f)}</div>"
        )
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
