"""Interchange with EAP-IG's graph JSON and MIB's circuit-track submissions.

>>> write_eap_ig(circuit, "ioi.eap.json", d_model=768)          # doctest: +SKIP
>>> read_eap_ig("ioi.eap.json").edge_names[:1]                  # doctest: +SKIP
('embed->L0H0<q>',)
>>> write_mib(circuit, "submission/", task="ioi", model="gpt2", d_model=768)  # doctest: +SKIP

EAP-IG (hannamw/EAP-IG, ``Graph.to_json``) writes ``{"cfg": {n_layers, n_heads,
parallel_attn_mlp, d_model}, "nodes": {name: {"in_graph", "score"?}}, "edges": {name:
{"score", "in_graph"}}}`` with its own node names; this is the only place they are spelled:

=========  ==========
mechkit    EAP-IG
=========  ==========
embed      input
L3H7       a3.h7
M3         m3
logits     logits
=========  ==========

Edges keep their form: ``embed->L1H3<q>`` is ``input->a1.h3<q>``. EAP-IG's own ``from_json``
ignores extra top-level keys, so :func:`to_eap_ig` can carry the rest of the artifact under
``"mechkit"`` and :func:`from_eap_ig` restores the circuit exactly.

MIB's circuit localization track takes one folder per task and model, ``<task>_<model>/``,
holding a single EAP-IG-format JSON with an importance score for every edge of the model's
graph (:func:`write_mib`).
"""

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from mechkit._types import Circuit, Edge, Node
from mechkit.artifacts.io import _f32, _no_duplicates, _read_bounded, from_document, graph_nodes, to_document
from mechkit.artifacts.schema import CircuitDocument, first_error
from mechkit.errors import ArtifactError, HookNameError

_EAP_NODE = re.compile(r"input|logits|a(\d+)\.h(\d+)|m(\d+)")
_EAP_EDGE = re.compile(r"(?P<src>[^<>-]+)->(?P<dst>[^<>]+?)(?:<(?P<qkv>[qkv])>)?")


def node_to_eap_ig(name: str) -> str:
    node = Node.parse(name)
    if node.kind == "embed":
        return "input"
    if node.kind == "head":
        return f"a{node.layer}.h{node.head}"
    if node.kind == "mlp":
        return f"m{node.layer}"
    if node.kind == "logits":
        return "logits"
    raise ArtifactError(f"node {name!r} is an SAE feature: EAP-IG graphs hold only heads, MLPs, input and logits")


def node_from_eap_ig(name: str) -> str:
    m = _EAP_NODE.fullmatch(name)
    if not m:
        raise ArtifactError(f"bad EAP-IG node name {name!r}: expected input, logits, a<layer>.h<head> or m<layer>")
    if name in ("input", "logits"):
        return "embed" if name == "input" else "logits"
    if m.group(1) is not None:
        return f"L{int(m.group(1))}H{int(m.group(2))}"
    return f"M{int(m.group(3))}"


def edge_to_eap_ig(name: str) -> str:
    e = Edge.parse(name)
    return f"{node_to_eap_ig(e.src)}->{node_to_eap_ig(e.dst)}" + (f"<{e.qkv}>" if e.qkv else "")


def edge_from_eap_ig(name: str) -> str:
    m = _EAP_EDGE.fullmatch(name)
    if not m:
        raise ArtifactError(f"bad EAP-IG edge name {name!r}: expected PARENT->CHILD or PARENT->a<l>.h<h><q|k|v>")
    mk = f"{node_from_eap_ig(m['src'])}->{node_from_eap_ig(m['dst'])}" + (f"<{m['qkv']}>" if m["qkv"] else "")
    try:
        return Edge.parse(mk).name
    except HookNameError as err:
        raise ArtifactError(f"bad EAP-IG edge name {name!r}: {err}") from None


def eap_ig_edges(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> list[str]:
    """Every edge of EAP-IG's graph for a config, in the order ``Graph.from_model`` builds them."""
    resid, edges = ["input"], []
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        mlp = f"m{layer}"
        for src in resid:
            edges += [f"{src}->{h}<{q}>" for h in heads for q in "qkv"]
            if parallel_attn_mlp:
                edges.append(f"{src}->{mlp}")
        resid += heads
        if not parallel_attn_mlp:
            edges += [f"{src}->{mlp}" for src in resid]
        resid.append(mlp)
    edges += [f"{src}->logits" for src in resid]
    return edges


def _cfg(circuit: Circuit, d_model: int | None, n_layers: int | None, n_heads: int | None, parallel: bool) -> dict:
    layers = [Node.parse(n) for n in graph_nodes(circuit)]
    n_layers = n_layers or 1 + max([n.layer for n in layers if n.kind in ("head", "mlp")], default=-1)
    n_heads = n_heads or 1 + max([n.head for n in layers if n.kind == "head"], default=-1)
    if d_model is None or d_model < 1:
        raise ArtifactError("EAP-IG graphs record d_model: pass d_model (the model's residual width)")
    return {"n_layers": int(n_layers), "n_heads": int(n_heads), "parallel_attn_mlp": bool(parallel), "d_model": int(d_model)}


def to_eap_ig(
    circuit: Circuit,
    *,
    d_model: int | None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    parallel_attn_mlp: bool = False,
    metadata: bool = True,
) -> dict[str, Any]:
    """The circuit as EAP-IG graph JSON; ``metadata`` adds the artifact fields under ``"mechkit"``."""
    cfg = _cfg(circuit, d_model, n_layers, n_heads, parallel_attn_mlp)
    in_nodes = set(circuit.nodes)
    all_nodes = ["input"] + [
        f"{k}" for layer in range(cfg["n_layers"]) for k in [f"a{layer}.h{h}" for h in range(cfg["n_heads"])] + [f"m{layer}"]
    ] + ["logits"]
    ours = {node_to_eap_ig(n): n for n in graph_nodes(circuit)}
    extra = sorted(set(ours) - set(all_nodes))
    if extra:
        raise ArtifactError(f"node {ours[extra[0]]!r} lies outside a {cfg['n_layers']}-layer, {cfg['n_heads']}-head graph")
    nodes = {}
    for name in all_nodes:
        mk = ours.get(name)
        nodes[name] = {"in_graph": mk in in_nodes if mk else False}
        if mk in circuit.node_scores:
            nodes[name]["score"] = float(circuit.node_scores[mk])
    scores = circuit.edge_scores.detach().float().cpu().tolist()
    keep = circuit.in_circuit.detach().bool().cpu().tolist()
    if not all(math.isfinite(s) for s in scores):
        raise ArtifactError("edge_scores hold NaN or infinity; EAP-IG scores must be finite")
    edges = {edge_to_eap_ig(n): {"score": _f32(s), "in_graph": bool(k)} for n, s, k in zip(circuit.edge_names, scores, keep)}
    out: dict[str, Any] = {"cfg": cfg, "nodes": nodes, "edges": edges}
    if metadata:
        doc, _ = to_document(circuit)
        out["mechkit"] = {k: v for k, v in doc.items() if k not in ("nodes", "edges")}
    return out


def write_eap_ig(circuit: Circuit, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`to_eap_ig` JSON to ``path`` (readable by EAP-IG's ``Graph.from_json``)."""
    path = Path(path)
    path.write_text(json.dumps(to_eap_ig(circuit, **kwargs), indent=1) + "\n", encoding="utf-8")
    return path


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def from_eap_ig(
    data: dict[str, Any],
    *,
    model_spec: str | None = None,
    model_fingerprint: str | None = None,
    task: dict[str, Any] | None = None,
    method: str | None = None,
) -> Circuit:
    """A Circuit from EAP-IG graph JSON (already parsed). Metadata under ``"mechkit"`` is used
    when present; keyword arguments override it and are required where it is absent."""
    data = _obj(data, "EAP-IG graph")
    unknown = sorted(set(data) - {"cfg", "nodes", "edges", "mechkit"})
    if unknown or not {"cfg", "nodes", "edges"} <= set(data):
        what = f"unknown key {unknown[0]!r}" if unknown else "missing cfg, nodes or edges"
        raise ArtifactError(f"EAP-IG graph: {what}; expected cfg, nodes, edges (and optionally mechkit)")
    _obj(data["cfg"], "cfg")
    names, scores, keep, seen = [], [], [], {}
    for eap_name, info in _obj(data["edges"], "edges").items():
        info = _obj(info, f"edges.{eap_name}")
        score, flag = info.get("score"), info.get("in_graph", False)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ArtifactError(f"edges.{eap_name}.score: {score!r} is not a finite number")
        if abs(score) > 3.4028234663852886e38:
            raise ArtifactError(f"edges.{eap_name}.score: overflows float32")
        if not isinstance(flag, bool):
            raise ArtifactError(f"edges.{eap_name}.in_graph: {flag!r} is not true or false")
        name = edge_from_eap_ig(eap_name)
        if name in seen:
            raise ArtifactError(f"edges: {seen[name]!r} and {eap_name!r} are the same edge {name!r}; "
                                "each edge may appear only once")
        seen[name] = eap_name
        names.append(name)
        scores.append(float(score))
        keep.append(flag)
    node_scores = {}
    for eap_name, info in _obj(data["nodes"], "nodes").items():
        info = _obj(info, f"nodes.{eap_name}")
        score = info.get("score")
        if score is None or eap_name == "logits":
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ArtifactError(f"nodes.{eap_name}.score: {score!r} is not a number")
        if math.isfinite(score):  # EAP-IG writes NaN for unscored nodes
            node_scores[node_from_eap_ig(eap_name)] = float(score)
    meta = dict(_obj(data.get("mechkit", {}), "mechkit"))
    old_model = _obj(meta.get("model", {}), "mechkit.model")
    old_method = _obj(meta.get("method", {}), "mechkit.method")
    if model_spec is not None or model_fingerprint is not None:
        meta["model"] = {
            "spec": model_spec if model_spec is not None else old_model.get("spec"),
            "fingerprint": model_fingerprint if model_fingerprint is not None else old_model.get("fingerprint", ""),
        }
    if task is not None:
        meta["task"] = task
    if method is not None:
        meta["method"] = {"name": method, "hyperparameters": old_method.get("hyperparameters", {})}
    if not _obj(meta.get("model", {}), "mechkit.model").get("spec"):
        raise ArtifactError("EAP-IG graph has no mechkit metadata: pass model_spec (and task, method) to import it")
    meta.setdefault("schema", "mechkit.circuit/1")
    meta.setdefault("mechkit_version", "")
    meta.setdefault("created", "")
    meta.setdefault("task", {"name": "unknown"})
    meta.setdefault("method", {"name": "unknown"})
    circuit = Circuit(
        model_spec="-", model_fingerprint="", task={"name": "-"}, method="-", hyperparameters={},
        edge_names=tuple(names), edge_scores=torch.tensor(scores, dtype=torch.float32).reshape(len(names)),
        in_circuit=torch.tensor(keep, dtype=torch.bool).reshape(len(names)), node_scores=node_scores,
    )
    skeleton, _ = to_document(circuit)
    try:
        doc = CircuitDocument.model_validate(meta | {"nodes": skeleton["nodes"], "edges": skeleton["edges"]})
    except ValueError as err:
        raise ArtifactError(f"EAP-IG graph: {first_error(err)}") from None
    return from_document(doc)


def read_eap_ig(path: str | os.PathLike, **kwargs: Any) -> Circuit:
    """Read an EAP-IG graph JSON file (see :func:`from_eap_ig` for the keyword arguments)."""
    path = Path(path)
    raw = _read_bounded(path, "EAP-IG graph", json_text=True)
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        why = str(err).splitlines()[0][:120]
        fix = "; each key may appear only once in an object" if "appears twice" in why else ""
        raise ArtifactError(f"{path.name}: not EAP-IG graph JSON ({why}){fix}") from None
    try:
        return from_eap_ig(data, **kwargs)
    except ArtifactError as err:
        raise ArtifactError(f"{path.name}: {err}") from None


def write_mib(
    circuit: Circuit,
    out_dir: str | os.PathLike,
    *,
    task: str,
    model: str,
    d_model: int,
    parallel_attn_mlp: bool = False,
    n_layers: int | None = None,
    n_heads: int | None = None,
) -> Path:
    """Write a MIB circuit-track importance-score submission: ``<out_dir>/<task>_<model>/importances.json``.

    MIB needs a score for every edge of the model's graph, so the circuit must have been scored
    on the full graph (``edge_names`` covering it); edges are written in EAP-IG's graph order.
    """
    for label, value in (("task", task), ("model", model)):
        if not re.fullmatch(r"[A-Za-z0-9.-]+", value):
            raise ArtifactError(f"MIB {label} {value!r}: use letters, digits, '.' and '-' only (folders are <task>_<model>)")
    graph = to_eap_ig(circuit, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      parallel_attn_mlp=parallel_attn_mlp, metadata=False)
    expected = eap_ig_edges(graph["cfg"]["n_layers"], graph["cfg"]["n_heads"], parallel_attn_mlp)
    missing = [e for e in expected if e not in graph["edges"]]
    if missing or len(graph["edges"]) != len(expected):
        odd = missing[0] if missing else sorted(set(graph["edges"]) - set(expected))[0]
        raise ArtifactError(
            f"MIB needs exactly the model's full edge graph: edge {odd!r} is "
            f"{'missing' if missing else 'not in it'}; score every edge (discover on the full graph)"
        )
    graph["edges"] = {e: graph["edges"][e] for e in expected}
    folder = Path(out_dir) / f"{task}_{model}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "importances.json"
    path.write_text(json.dumps(graph) + "\n", encoding="utf-8")
    return path


__all__ = [
    "edge_from_eap_ig", "edge_to_eap_ig", "eap_ig_edges", "from_eap_ig", "node_from_eap_ig", "node_to_eap_ig",
    "read_eap_ig", "to_eap_ig", "write_eap_ig", "write_mib",
]
