"""Render a circuit as one self-contained HTML page (inline CSS, JS and data; works offline).

>>> html = circuit_html(load_circuit("ioi.circuit.json"))   # doctest: +SKIP

Layout: one row per component kind and layer, ``embed`` at the bottom, then for each layer a
row of heads and a row of MLPs, ``logits`` on top. Edges are drawn with width and opacity by
|score| (blue positive, red negative, dashed when not in the circuit); hovering shows names and
scores. A slider sets the edge budget: the top-k edges by |score| are drawn. This module reads
circuits only; it imports no model code.
"""

import html
import itertools
import json
import re
from importlib.resources import files
from typing import Any

from mechkit._types import Circuit, Edge, Node, _node_order

MAX_DRAWN_EDGES = 5_000  # the page carries at most this many edges (plus every in-circuit edge)
_ids = itertools.count()


def _asset(name: str) -> str:
    return files("mechkit.viewer").joinpath(name).read_text(encoding="utf-8")


def _row(node: Node, n_layers: int) -> int:
    """embed 0; heads of layer l at 2l+1; MLPs (and SAE features of layer l) at 2l+2; logits on top."""
    if node.kind == "embed":
        return 0
    if node.kind == "logits":
        return 2 * n_layers + 1
    if node.kind == "head":
        return 2 * node.layer + 1
    if node.kind == "mlp":
        return 2 * node.layer + 2
    m = re.search(r"blocks\.(\d+)\.", node.name)
    return 2 * int(m.group(1)) + 2 if m else 1


def _row_label(node: Node) -> str:
    if node.kind in ("embed", "logits"):
        return node.kind
    if node.kind == "head":
        return f"layer {node.layer} attn"
    if node.kind == "mlp":
        return f"layer {node.layer} MLP"
    m = re.search(r"blocks\.(\d+)\.", node.name)
    return f"layer {m.group(1)} features" if m else "features"


def _label(node: Node) -> str:
    if node.kind == "feature":
        return f"F{node.head}"
    return node.name


def _summary(c: Circuit) -> list[tuple[str, str]]:
    def compact(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if value else "—"

    task = dict(c.task)
    task_line = task.pop("name", "?") + (" " + compact(task) if task else "")
    faith = "; ".join(
        f"{f.ablation}: {f.value:.4f}"
        + (f" [{f.ci_low:.4f}, {f.ci_high:.4f}]" if f.ci_low is not None and f.ci_high is not None else "")
        + (f" over {f.n_prompts} prompts" if f.n_prompts else "")
        for f in c.faithfulness
    )
    n_in = int(c.in_circuit.sum())
    return [
        ("model", c.model_spec),
        ("fingerprint", c.model_fingerprint or "unknown"),
        ("task", task_line),
        ("method", c.method + (" " + compact(c.hyperparameters) if c.hyperparameters else "")),
        ("selection", compact(c.selection)),
        ("faithfulness", faith or "not measured"),
        ("edges", f"{n_in} in circuit of {len(c.edge_names)}"),
        ("created", (c.created or "—") + (f" (mechkit {c.mechkit_version})" if c.mechkit_version else "")),
    ]


def payload(circuit: Circuit) -> dict[str, Any]:
    """The data the page draws: nodes with rows, edges sorted by |score| (largest first)."""
    scores = circuit.edge_scores.detach().float().cpu().tolist()
    keep = circuit.in_circuit.detach().bool().cpu().tolist()
    edges = [Edge.parse(n) for n in circuit.edge_names]
    names = set(circuit.node_scores)
    for e in edges:
        names.update((e.src, e.dst))
    nodes = [Node.parse(n) for n in sorted(names, key=_node_order)]
    n_layers = 1 + max([n.layer for n in nodes if n.kind in ("head", "mlp")], default=-1)
    for n in nodes:
        if n.kind == "feature":
            m = re.search(r"blocks\.(\d+)\.", n.name)
            n_layers = max(n_layers, int(m.group(1)) + 1 if m else 1)
    in_circuit = set(circuit.nodes)
    order = sorted(range(len(edges)), key=lambda i: (-abs(scores[i]), i))
    top = order[:MAX_DRAWN_EDGES]
    extra = [i for i in order[MAX_DRAWN_EDGES:] if keep[i]]
    drawn = top + extra
    return {
        "summary": _summary(circuit),
        "nodes": [
            {
                "name": n.name,
                "kind": n.kind,
                "label": _label(n),
                "row": _row(n, n_layers),
                "score": circuit.node_scores.get(n.name),
                "in_circuit": n.name in in_circuit,
            }
            for n in nodes
        ],
        "edges": [
            [edges[i].src, edges[i].dst, edges[i].qkv, scores[i], bool(keep[i]), circuit.edge_names[i]] for i in drawn
        ],
        "row_labels": {str(_row(n, n_layers)): _row_label(n) for n in nodes},
        "budget": int(sum(keep)),
        "total_edges": len(edges),
    }


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no '<!--')."""
    return json.dumps(data, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def circuit_html(circuit: Circuit, *, full_page: bool = True, title: str | None = None) -> str:
    """The viewer as a full HTML document, or (``full_page=False``) a fragment for notebooks."""
    uid = f"mk-viewer-{next(_ids)}"
    title = title or f"{circuit.task.get('name', 'circuit')} circuit in {circuit.model_spec}"
    fragment = f"""<div class="mk-viewer" id="{uid}">
<style>{_asset("viewer.css")}</style>
<h2>{html.escape(title)}</h2>
<dl class="mk-summary"></dl>
<div class="mk-controls"><label>edge budget <input type="range" class="mk-budget" min="0" step="1"></label>
<span class="mk-count"></span></div>
<div class="mk-legend">blue: positive score, red: negative; dashed: not in the circuit; hover for scores</div>
<div class="mk-canvas"></div>
<script type="application/json" id="{uid}-data">{_script_json(payload(circuit))}</script>
<script>
(function () {{
{_asset("viewer.js")}
var root = document.getElementById("{uid}");
mechkitRender(root, JSON.parse(document.getElementById("{uid}-data").textContent));
}})();
</script>
</div>"""
    if not full_page:
        return fragment
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
</head>
<body>
{fragment}
</body>
</html>
"""
