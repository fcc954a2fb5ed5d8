"""A static PNG of a circuit (matplotlib), for READMEs and papers; the HTML viewer is the
interactive one. Layout as in the viewer: embed at the bottom, one row per layer (heads, then
the MLP), logits on top; in-circuit edges drawn with width by |score|.

Models deeper than ``DEEP_LAYERS`` layers (a 30-layer model has about 300 nodes) are drawn as a
grid instead: one row per layer on a labelled layer axis, head h in column h and the MLP in a
column of its own half a row higher, named by the axes rather than one label per node;
in-circuit nodes are filled, the others are small grey dots, and edges are thin lines with
opacity and width by |score| (the strongest drawn last, on top).
"""

import os
from pathlib import Path

from mechkit._types import Circuit, Edge, Node

DEEP_LAYERS = 6  # deeper models get the grid layout


def _position(node: Node, n_heads: int) -> tuple[float, float]:
    if node.kind == "embed":
        return (n_heads - 1) / 2, 0.0
    if node.kind == "logits":
        return (n_heads - 1) / 2, None  # y filled in by the caller
    row = 1 + 2 * node.layer + (1 if node.kind == "mlp" else 0)
    x = node.head if node.kind == "head" else (n_heads - 1) / 2
    return float(x), float(row)


def write_png(circuit: Circuit, path: str | os.PathLike, title: str | None = None, dpi: int = 150) -> Path:
    """Draw the circuit's graph (all nodes, in-circuit edges) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {n for edge in map(Edge.parse, circuit.edge_names) for n in (edge.src, edge.dst)}
    nodes = [Node.parse(n) for n in names]
    n_heads = 1 + max((n.head for n in nodes if n.kind == "head"), default=0)
    n_layers = 1 + max((n.layer for n in nodes if n.kind in ("head", "mlp")), default=0)
    if n_layers > DEEP_LAYERS:
        return _write_grid(circuit, nodes, n_layers, n_heads, Path(path), title, dpi)
    top = 1 + 2 * n_layers
    pos = {}
    for node in nodes:
        x, y = _position(node, n_heads)
        pos[node.name] = (x, top if y is None else y)
    in_circuit = set(circuit.nodes)
    edges = [(Edge.parse(e), float(s)) for e, s, keep in
             zip(circuit.edge_names, circuit.edge_scores.tolist(), circuit.in_circuit.tolist()) if keep]
    biggest = max((abs(s) for _, s in edges), default=1.0) or 1.0

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * n_heads, 1.2 + 0.9 * top))
    for edge, score in edges:
        (x0, y0), (x1, y1) = pos[edge.src], pos[edge.dst]
        ax.annotate("", xy=(x1, y1 - 0.18), xytext=(x0, y0 + 0.18),
                    arrowprops=dict(arrowstyle="-|>", lw=0.6 + 4 * abs(score) / biggest,
                                    color="#2b6cb0" if score >= 0 else "#c53030", alpha=0.8,
                                    connectionstyle="arc3,rad=0.08"))
    colours = {"embed": "#fbd38d", "logits": "#fbd38d", "head": "#bee3f8", "mlp": "#c6f6d5"}
    for node in nodes:
        x, y = pos[node.name]
        active = node.name in in_circuit
        ax.text(x, y, node.name, ha="center", va="center", fontsize=9,
                color="black" if active else "#a0aec0",
                bbox=dict(boxstyle="round,pad=0.3", fc=colours[node.kind] if active else "#f7fafc",
                          ec="#4a5568" if active else "#cbd5e0"))
    ax.set_xlim(-0.8, n_heads - 0.2)
    ax.set_ylim(-0.6, top + 0.6)
    ax.axis("off")
    ax.set_title(title or _title(circuit), fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _title(circuit: Circuit) -> str:
    faith = circuit.faithfulness[0] if circuit.faithfulness else None
    subtitle = f"{int(circuit.in_circuit.sum())} of {len(circuit.edge_names)} edges"
    if faith is not None:
        subtitle += f"; faithfulness ({faith.ablation}) {faith.value:.2f}"
    return f"{circuit.task.get('name', 'circuit')} circuit ({circuit.method})\n{subtitle}"


def _grid_position(node: Node, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Head h of layer l at (h, l); the MLP of layer l at (n_heads + 0.5, l + 0.5)."""
    if node.kind == "embed":
        return (n_heads - 1) / 2, -1.0
    if node.kind == "logits":
        return (n_heads - 1) / 2, float(n_layers)
    if node.kind == "mlp":
        return n_heads + 0.5, node.layer + 0.5
    return float(node.head), float(node.layer)


def _write_grid(circuit: Circuit, nodes: list[Node], n_layers: int, n_heads: int, path: Path,
                title: str | None, dpi: int) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    pos = {n.name: _grid_position(n, n_layers, n_heads) for n in nodes}
    in_circuit = set(circuit.nodes)
    keep = circuit.in_circuit.bool()
    scores = circuit.edge_scores[keep].tolist()
    edges = [Edge.parse(e) for e, k in zip(circuit.edge_names, keep.tolist()) if k]
    biggest = max((abs(s) for s in scores), default=1.0) or 1.0
    order = sorted(range(len(edges)), key=lambda i: abs(scores[i]))  # weakest first, strongest on top
    many = len(edges) > 300
    segments, colours, widths = [], [], []
    for i in order:
        rel = (abs(scores[i]) / biggest) ** 0.5  # sqrt: weak edges stay visible
        segments.append([pos[edges[i].src], pos[edges[i].dst]])
        rgb = (0.17, 0.42, 0.69) if scores[i] >= 0 else (0.77, 0.19, 0.19)
        colours.append((*rgb, (0.06 if many else 0.25) + (0.6 if many else 0.65) * rel))
        widths.append((0.3 if many else 0.6) + 2.6 * rel)

    fig, ax = plt.subplots(figsize=(2.0 + 0.62 * (n_heads + 2), 1.6 + 0.34 * (n_layers + 2)))
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=widths, zorder=1))
    fills = {"embed": "#fbd38d", "logits": "#fbd38d", "head": "#90cdf4", "mlp": "#9ae6b4"}
    for kind, marker in (("head", "o"), ("mlp", "s"), ("embed", "D"), ("logits", "D")):
        on = [pos[n.name] for n in nodes if n.kind == kind and n.name in in_circuit]
        off = [pos[n.name] for n in nodes if n.kind == kind and n.name not in in_circuit]
        if off:
            ax.scatter(*zip(*off), s=6, marker=marker, color="#cbd5e0", zorder=2, linewidths=0)
        if on:
            ax.scatter(*zip(*on), s=34, marker=marker, color=fills[kind], edgecolors="#2d3748",
                       linewidths=0.6, zorder=3)
    for name in ("embed", "logits"):
        if name in pos:
            x, y = pos[name]
            ax.annotate(name, (x, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xticks(list(range(n_heads)) + [n_heads + 0.5], [f"H{h}" for h in range(n_heads)] + ["MLP"], fontsize=8)
    ax.xaxis.set_ticks_position("top")
    ax.set_yticks(range(n_layers), [f"L{layer}" for layer in range(n_layers)], fontsize=8)
    ax.set_xlim(-0.7, n_heads + 1.2)
    ax.set_ylim(-1.6, n_layers + 0.6)
    ax.grid(axis="y", color="#edf2f7", linewidth=0.6, zorder=0)
    for side in ("right", "bottom", "left", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    ax.set_ylabel("layer (embed at the bottom, logits on top)", fontsize=8)
    ax.set_title(title or _title(circuit), fontsize=10, pad=18)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
