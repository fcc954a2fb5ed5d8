"""Render a circuit as one self-contained HTML page (inline CSS, JS and data; works offline).

>>> html = circuit_html(load_circuit("ioi.circuit.json"))   # doctest: +SKIP

Layout: one row per component kind and layer, ``embed`` at the bottom, then for each layer a
row of heads (head h in column h) and a row of MLPs, ``logits`` on top, with the rows named on
a layer axis at the left. Edges are drawn with width and opacity by |score| (blue positive, red
negative, dashed when not in the circuit); hovering shows names and scores. A slider sets the
edge budget: the circuit's edges first, strongest first, then the strongest of the rest.

Large graphs (a 30-layer model has about 300 nodes) open folded: nodes that no drawn edge
touches are hidden, and each row shows how many it hides ("+7"); a button shows them again.
The mouse wheel zooms about the pointer, dragging pans, and the buttons zoom, and fit the
whole graph to the view. Node labels are drawn only when zoomed in far enough to read them.
This module reads circuits only; it imports no model code.
"""

import html
import itertools
import json
import re
from importlib.resources import files
from typing import Any

import torch

from mechkit._types import Circuit, Edge, Node, _node_order

MAX_DRAWN_EDGES = 5_000  # the page carries every in-circuit edge plus at most this many others
FOLD_ABOVE_NODES = 40  # larger graphs open with the nodes outside the drawn edges folded per row
_QKV = {None: 0, "q": 1, "k": 2, "v": 3}
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
    """The data the page draws, compactly: every node of the graph, and the drawable edges.

    Edges are ``[src, dst, qkv, score]`` with ``src``/``dst`` indices into ``nodes``, ``qkv``
    0 (none), 1 (q), 2 (k) or 3 (v), and the score rounded to 6 significant digits; the page
    rebuilds each edge's canonical name from them. The circuit's own edges come first (the
    first ``budget``, by |score|), then the strongest of the rest, up to ``MAX_DRAWN_EDGES``
    of those: a 123k-edge graph does not put every score into the page.
    """
    scores = circuit.edge_scores.detach().float().cpu()
    keep = circuit.in_circuit.detach().bool().cpu()
    names = set(circuit.node_scores)
    for e in circuit.edge_names:
        src, _, rest = e.partition("->")
        names.update((src, rest.split("<", 1)[0]))
    nodes = [Node.parse(n) for n in sorted(names, key=_node_order)]
    index = {n.name: i for i, n in enumerate(nodes)}
    n_layers = 1 + max([n.layer for n in nodes if n.kind in ("head", "mlp")], default=-1)
    for n in nodes:
        if n.kind == "feature":
            m = re.search(r"blocks\.(\d+)\.", n.name)
            n_layers = max(n_layers, int(m.group(1)) + 1 if m else 1)
    in_circuit = set(circuit.nodes)
    # circuit edges by |score|, then the others by |score|; ties keep graph order (stable sort)
    order = torch.argsort(scores.abs(), descending=True, stable=True)
    inside, outside = order[keep[order]], order[~keep[order]]
    drawn = torch.cat([inside, outside[:MAX_DRAWN_EDGES]]).tolist()
    drawn_scores = scores[drawn].tolist()
    edges = []
    for i, score in zip(drawn, drawn_scores):
        e = Edge.parse(circuit.edge_names[i])
        edges.append([index[e.src], index[e.dst], _QKV[e.qkv], float(f"{score:.6g}")])
    return {
        "summary": _summary(circuit),
        "nodes": [
            {
                "name": n.name,
                "kind": n.kind,
                "label": _label(n),
                "row": _row(n, n_layers),
                "col": n.head if n.kind == "head" else None,
                "score": circuit.node_scores.get(n.name),
                "in_circuit": n.name in in_circuit,
            }
            for n in nodes
        ],
        "edges": edges,
        "row_labels": {str(_row(n, n_layers)): _row_label(n) for n in nodes},
        "budget": len(inside),
        "total_edges": len(circuit.edge_names),
        "folded": len(nodes) > FOLD_ABOVE_NODES,
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
<div class="mk-controls mk-view"><button type="button" class="mk-zoom-in" title="zoom in">+</button>
<button type="button" class="mk-zoom-out" title="zoom out">&minus;</button>
<button type="button" class="mk-fit" title="fit the whole graph">fit</button>
<button type="button" class="mk-fold-toggle"></button><span class="mk-folded-count"></span></div>
<div class="mk-legend">blue: positive score, red: negative; dashed: not in the circuit; hover for scores;
wheel or +/&minus; to zoom, drag to pan</div>
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
