"""A static PNG of a circuit (matplotlib), for READMEs and papers; the HTML viewer is the
interactive one. Layout as in the viewer: embed at the bottom, one row per layer (heads, then
the MLP), logits on top; in-circuit edges drawn with width by |score|.
"""

import os
from pathlib import Path

from mechkit._types import Circuit, Edge, Node


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

    names = {n for e in circuit.edge_names for n in (Edge.parse(e).src, Edge.parse(e).dst)}
    nodes = [Node.parse(n) for n in names]
    n_heads = 1 + max((n.head for n in nodes if n.kind == "head"), default=0)
    n_layers = 1 + max((n.layer for n in nodes if n.kind in ("head", "mlp")), default=0)
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
    faith = circuit.faithfulness[0] if circuit.faithfulness else None
    subtitle = f"{int(circuit.in_circuit.sum())} of {len(circuit.edge_names)} edges"
    if faith is not None:
        subtitle += f"; faithfulness ({faith.ablation}) {faith.value:.2f}"
    ax.set_title(title or f"{circuit.task.get('name', 'circuit')} circuit ({circuit.method})\n{subtitle}", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
