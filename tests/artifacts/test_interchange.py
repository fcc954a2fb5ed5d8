"""EAP-IG graph JSON and MIB submissions: name mapping, round trips, format checks."""

import json

import pytest
import torch

from mechkit.artifacts.interchange import (
    eap_ig_edges,
    edge_from_eap_ig,
    edge_to_eap_ig,
    from_eap_ig,
    node_from_eap_ig,
    node_to_eap_ig,
    read_eap_ig,
    to_eap_ig,
    write_eap_ig,
    write_mib,
)
from mechkit.errors import ArtifactError
from tests.artifacts.helpers import assert_same, graph_edges, make_circuit


@pytest.mark.parametrize("ours, theirs", [("embed", "input"), ("L3H7", "a3.h7"), ("M3", "m3"), ("logits", "logits"),
                                          ("L10H11", "a10.h11")])
def test_node_names(ours, theirs):
    assert node_to_eap_ig(ours) == theirs and node_from_eap_ig(theirs) == ours


@pytest.mark.parametrize("ours, theirs", [("embed->L1H3<q>", "input->a1.h3<q>"), ("L0H1->M2", "a0.h1->m2"),
                                          ("M1->logits", "m1->logits"), ("L0H0->L1H1<v>", "a0.h0->a1.h1<v>")])
def test_edge_names(ours, theirs):
    assert edge_to_eap_ig(ours) == theirs and edge_from_eap_ig(theirs) == ours


@pytest.mark.parametrize("bad", ["a1h3->logits", "input->a1.h3", "m1->input", "logits->m0", "x->y"])
def test_bad_eap_ig_edges(bad):
    with pytest.raises(ArtifactError, match="bad EAP-IG"):
        edge_from_eap_ig(bad)


def test_feature_nodes_cannot_be_exported():
    with pytest.raises(ArtifactError, match="SAE feature"):
        node_to_eap_ig("F:blocks.0.hook_resid_post:3")


def test_our_graph_order_matches_eap_ig():
    for layers, heads in ((1, 1), (2, 3), (4, 2)):
        assert [edge_to_eap_ig(e) for e in graph_edges(layers, heads)] == eap_ig_edges(layers, heads)
    assert len(eap_ig_edges(12, 12)) == 32491  # GPT-2 small's edge count in EAP-IG
    assert len(eap_ig_edges(2, 2, parallel_attn_mlp=True)) == 6 + 1 + 4 * 6 + 4 + 7


def test_round_trip_through_eap_ig_json(tmp_path):
    c = make_circuit(n_layers=3, n_heads=2, n_keep=7)
    path = write_eap_ig(c, tmp_path / "g.json", d_model=16)
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 16}
    assert list(data["nodes"]) == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "a2.h0", "a2.h1", "m2", "logits"]
    assert data["nodes"]["a0.h0"]["score"] == 0.25
    assert list(data["edges"]) == eap_ig_edges(3, 2)
    i = c.edge_names.index("embed->L1H0<k>")
    assert data["edges"]["input->a1.h0<k>"] == {"score": pytest.approx(float(c.edge_scores[i]), rel=1e-6),
                                                  "in_graph": bool(c.in_circuit[i])}
    assert sum(e["in_graph"] for e in data["edges"].values()) == 7
    assert_same(c, read_eap_ig(path))


def test_import_plain_eap_ig_json_needs_model_spec(tmp_path):
    c = make_circuit(n_layers=1, n_heads=1, n_keep=2)
    data = to_eap_ig(c, d_model=8, metadata=False)
    assert "mechkit" not in data
    with pytest.raises(ArtifactError, match="pass model_spec"):
        from_eap_ig(data)
    back = from_eap_ig(data, model_spec="gpt2", task={"name": "ioi", "split": "test"}, method="eap-ig")
    assert back.model_spec == "gpt2" and back.task == {"name": "ioi", "split": "test"} and back.method == "eap-ig"
    assert back.edge_names == c.edge_names and torch.equal(back.edge_scores, c.edge_scores)
    assert torch.equal(back.in_circuit, c.in_circuit) and back.node_scores == {"L0H0": 0.25}


def test_import_handwritten_eap_ig_graph():
    nan = float("nan")
    data = {
        "cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False, "d_model": 4},
        "nodes": {"input": {"in_graph": True, "score": nan}, "a0.h0": {"in_graph": True, "score": 0.5},
                  "m0": {"in_graph": False}, "logits": {"in_graph": True}},
        "edges": {"input->a0.h0<q>": {"score": 0.75, "in_graph": True}, "input->a0.h0<k>": {"score": 0.0, "in_graph": False},
                  "input->a0.h0<v>": {"score": -0.5, "in_graph": True}, "input->m0": {"score": 0.1, "in_graph": False},
                  "a0.h0->m0": {"score": 0.2, "in_graph": False}, "input->logits": {"score": 1, "in_graph": True},
                  "a0.h0->logits": {"score": 2.5, "in_graph": True}, "m0->logits": {"score": -1.0, "in_graph": False}},
    }
    c = from_eap_ig(data, model_spec="organism:induction")
    assert c.edges[0].name == "embed->L0H0<q>"
    assert [e.name for e in c.edges] == ["embed->L0H0<q>", "embed->L0H0<v>", "embed->logits", "L0H0->logits"]
    assert c.node_scores == {"L0H0": 0.5}
    assert c.nodes == ["embed", "L0H0", "logits"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["edges"].update({"input->a0.h0<q>": {"score": "high", "in_graph": True}}), "not a finite number"),
    (lambda d: d["edges"].update({"input->a0.h0<q>": {"score": float("inf"), "in_graph": True}}), "not a finite number"),
    (lambda d: d["edges"].update({"input->a0.h0<q>": {"score": 1.0, "in_graph": "yes"}}), "not true or false"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.pop("cfg"), "missing cfg"),
    (lambda d: d["mechkit"]["task"].update(colour=1), r"task\.colour: Extra inputs"),
    (lambda d: d.update(mechkit=[1]), "mechkit: expected a JSON object"),
])
def test_bad_eap_ig_input(mutate, message):
    data = to_eap_ig(make_circuit(n_layers=1, n_heads=1, n_keep=2), d_model=8)
    mutate(data)
    with pytest.raises(ArtifactError, match=message):
        from_eap_ig(data)


def test_write_mib_submission(tmp_path):
    c = make_circuit(n_layers=2, n_heads=2, n_keep=5)
    # a shuffled edge order still produces EAP-IG's order in the submission
    perm = torch.randperm(len(c.edge_names), generator=torch.Generator().manual_seed(1))
    shuffled = make_circuit(n_layers=2, n_heads=2, edge_names=tuple(c.edge_names[i] for i in perm),
                            edge_scores=c.edge_scores[perm], in_circuit=c.in_circuit[perm])
    path = write_mib(shuffled, tmp_path / "sub", task="ioi", model="tiny", d_model=16)
    assert path == tmp_path / "sub" / "ioi_tiny" / "importances.json"
    data = json.loads(path.read_text())
    assert set(data) == {"cfg", "nodes", "edges"}
    assert list(data["edges"]) == eap_ig_edges(2, 2)
    back = from_eap_ig(data, model_spec="organism:tiny")
    assert back.edge_names == c.edge_names and torch.equal(back.edge_scores, c.edge_scores)


def test_mib_needs_the_full_graph(tmp_path):
    c = make_circuit(n_layers=2, n_heads=2)
    partial = make_circuit(edge_names=c.edge_names[:-1], edge_scores=c.edge_scores[:-1], in_circuit=c.in_circuit[:-1])
    with pytest.raises(ArtifactError, match="'m1->logits' is missing"):
        write_mib(partial, tmp_path, task="ioi", model="tiny", d_model=16)
    with pytest.raises(ArtifactError, match="letters, digits"):
        write_mib(c, tmp_path, task="ioi_x", model="tiny", d_model=16)
    with pytest.raises(ArtifactError, match="pass d_model"):
        to_eap_ig(c, d_model=None)
