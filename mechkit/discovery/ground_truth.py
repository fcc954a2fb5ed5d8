"""Scoring discovered circuits against known ones: AUROC of scores, Jaccard of node sets.

>>> truth = ground_truth("wired-induction")              # doctest: +SKIP
>>> edge_auroc(scores, truth), node_auroc(scores, truth) # doctest: +SKIP
(1.0, 1.0)

Wired organisms carry their circuit in ``card.json`` as
``"ground_truth": {"nodes": [...], "edges": [...]}`` with canonical names. AUROC ranks items
by |score| (the probability that a true item outscores a false one, ties counting half), over
every edge of the graph or every head and MLP.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mechkit._types import Edge, Node
from mechkit.discovery.scores import EdgeScores
from mechkit.errors import ArtifactError, MechkitError
from mechkit.models import organisms_dir


class GroundTruthError(MechkitError, ValueError):
    """A missing or unusable ground-truth circuit."""


@dataclass(frozen=True)
class GroundTruth:
    nodes: frozenset[str]
    edges: frozenset[str]


def ground_truth(organism: str | Path) -> GroundTruth:
    """The known circuit of an organism (name, ``organism:NAME`` or directory) from card.json."""
    text = str(organism)
    path = Path(text) if Path(text).is_dir() else organisms_dir() / text.removeprefix("organism:")
    card_path = path / "card.json"
    if not card_path.is_file():
        raise GroundTruthError(f"no card.json in {path}: only wired organisms ship a ground-truth circuit")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{card_path} is not valid JSON") from None
    truth = card.get("ground_truth")
    if not isinstance(truth, dict) or not isinstance(truth.get("nodes"), list) or not isinstance(truth.get("edges"), list):
        raise GroundTruthError(f"{card_path} has no 'ground_truth': {{'nodes': [...], 'edges': [...]}}")
    nodes = frozenset(Node.parse(n).name for n in truth["nodes"])
    edges = frozenset(Edge.parse(e).name for e in truth["edges"])
    return GroundTruth(nodes, edges)


def auroc(scores: np.ndarray | list[float], positive: np.ndarray | list[bool]) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` labels (Mann-Whitney U).

    >>> auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
    1.0
    """
    from scipy.stats import rankdata  # imported here: scipy.stats is slow to import

    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise GroundTruthError(f"AUROC needs both classes: got {n_pos} true and {n_neg} false items")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def edge_auroc(scores: EdgeScores, truth: GroundTruth) -> float:
    """AUROC of |edge score| against the true edges."""
    unknown = truth.edges - set(scores.edge_names)
    if unknown:
        raise GroundTruthError(f"{len(unknown)} true edges are not in the model's graph, e.g. {sorted(unknown)[0]!r}")
    labels = [name in truth.edges for name in scores.edge_names]
    return auroc(scores.scores.abs().numpy(), labels)


def node_auroc(scores: EdgeScores, truth: GroundTruth) -> float:
    """AUROC of |node score| over heads and MLPs against the true nodes (embed/logits ignored)."""
    names = scores.graph.node_names
    labels = [name in truth.nodes for name in names]
    return auroc(scores.node_scores.abs().numpy(), labels)


def jaccard(a: set[str] | frozenset[str] | tuple[str, ...], b: set[str] | frozenset[str] | tuple[str, ...]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets).

    >>> jaccard({"L0H1", "L1H0"}, {"L1H0"})
    0.5
    """
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def circuit_nodes(edge_names: tuple[str, ...], in_circuit) -> frozenset[str]:
    """Heads and MLPs touched by an in-circuit edge (embed and logits left out)."""
    out = set()
    for name, keep in zip(edge_names, list(in_circuit)):
        if keep:
            e = Edge.parse(name)
            out.update((e.src, e.dst))
    return frozenset(out - {"embed", "logits"})
