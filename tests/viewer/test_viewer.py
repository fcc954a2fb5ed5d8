"""The HTML viewer: self-contained, draws every node and the budgeted edges, slider redraws."""

import re
from pathlib import Path

import torch

from mechkit.viewer import circuit_html, payload, write_html
from tests.artifacts.helpers import make_circuit


def _slide(page, k):
    page.eval_on_selector(".mk-budget", "(el, k) => { el.value = String(k); el.dispatchEvent(new Event('input')); }", k)


def test_page_draws_nodes_and_circuit_edges(tmp_path, open_page):
    c = make_circuit(n_layers=2, n_heads=2, n_keep=5)
    page, errors = open_page(write_html(c, tmp_path / "c.html"))
    n_nodes = 1 + 2 * 3 + 1  # embed, 2 x (2 heads + MLP), logits
    assert page.locator("svg [data-node]").count() == n_nodes
    assert page.locator("svg [data-edge]").count() == 5
    drawn = set(page.eval_on_selector_all("svg [data-edge]", "els => els.map(e => e.dataset.edge)"))
    assert drawn == {e.name for e in c.edges}
    assert page.locator("svg [data-edge][data-in='1']").count() == 5
    assert "top 5 of 46 edges" in page.locator(".mk-count").inner_text()
    rows = page.eval_on_selector_all("svg .mk-row", "els => els.map(e => e.textContent)")
    assert sorted(rows) == sorted(["embed", "layer 0 attn", "layer 0 MLP", "layer 1 attn", "layer 1 MLP", "logits"])
    y = {n: page.locator(f"svg [data-node='{n}']").bounding_box()["y"] for n in ("embed", "L0H0", "M0", "L1H1", "logits")}
    assert y["embed"] > y["L0H0"] > y["M0"] > y["L1H1"] > y["logits"]  # embed at the bottom, logits on top
    summary = page.locator(".mk-summary").inner_text()
    for text in ("organism:tiny", c.model_fingerprint, "induction", "eap-ig", "resample: 0.8750"):
        assert text in summary
    assert errors == []
    assert all(u.startswith("file:") for u in page.requests)


def test_slider_changes_drawn_edges(tmp_path, open_page):
    c = make_circuit(n_layers=2, n_heads=2, n_keep=5)
    page, errors = open_page(write_html(c, tmp_path / "c.html"))
    for k in (12, 0, 46, 3):
        _slide(page, k)
        assert page.locator("svg [data-edge]").count() == k
    # the 3 drawn edges are the top 3 by |score|
    top3 = sorted(range(46), key=lambda i: -abs(float(c.edge_scores[i])))[:3]
    drawn = set(page.eval_on_selector_all("svg [data-edge]", "els => els.map(e => e.dataset.edge)"))
    assert drawn == {c.edge_names[i] for i in top3}
    widths = page.eval_on_selector_all("svg [data-edge]", "els => els.map(e => +e.getAttribute('stroke-width'))")
    assert max(widths) > min(widths)
    assert errors == []


def test_hover_titles_carry_scores(tmp_path, open_page):
    c = make_circuit()
    page, errors = open_page(write_html(c, tmp_path / "c.html"))
    first = page.locator("svg [data-edge]").first
    name = first.get_attribute("data-edge")
    i = c.edge_names.index(name)
    title = first.locator("title").text_content()
    assert name in title and f"{float(c.edge_scores[i]):.4f}"[:5] in title
    assert "score 0.2500" in page.locator("svg [data-node='L0H0'] title").text_content()
    assert errors == []


def test_hostile_strings_are_not_markup(tmp_path, open_page):
    evil = "</script><script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
    c = make_circuit(model_spec=evil, task={"name": "t", "params": {"x": evil}})
    html = circuit_html(c)
    assert "</script><script>window.pwned" not in html
    page, errors = open_page(write_html(c, tmp_path / "c.html"))
    assert page.evaluate("window.pwned === undefined")
    assert evil in page.locator(".mk-summary").inner_text()
    assert errors == []


def test_feature_circuit_and_notebook_fragment(tmp_path, open_page):
    names = ("embed->F:blocks.0.hook_resid_post:12", "F:blocks.0.hook_resid_post:12->logits", "embed->logits")
    c = make_circuit(edge_names=names, edge_scores=torch.tensor([0.5, -0.25, 0.1]),
                     in_circuit=torch.tensor([True, True, False]), node_scores={})
    fragment = c._repr_html_()
    assert not fragment.lstrip().startswith("<!DOCTYPE")
    page_path = tmp_path / "two.html"
    page_path.write_text(f"<!DOCTYPE html><html><body>{fragment}{make_circuit()._repr_html_()}</body></html>")
    page, errors = open_page(page_path)
    assert page.locator(".mk-viewer").count() == 2
    first, second = page.locator(".mk-viewer").nth(0), page.locator(".mk-viewer").nth(1)
    assert first.locator("svg [data-node]").count() == 3 and first.locator("svg [data-edge]").count() == 2
    assert second.locator("svg [data-edge]").count() == 5
    assert errors == []


def test_page_is_self_contained():
    html = circuit_html(make_circuit())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "cdn" not in html.lower()
    assert html.count("<script") == 2  # data + inline code


def test_payload_caps_edges_but_keeps_circuit():
    from mechkit.viewer import html as vh

    c = make_circuit(n_layers=8, n_heads=8)
    keep = torch.zeros(len(c.edge_names), dtype=torch.bool)
    keep[c.edge_scores.abs().argsort()[:7]] = True  # the 7 weakest edges form the circuit
    c = make_circuit(n_layers=8, n_heads=8, in_circuit=keep)
    data = payload(c)
    assert len(c.edge_names) > vh.MAX_DRAWN_EDGES + 7
    assert len(data["edges"]) == vh.MAX_DRAWN_EDGES + 7
    assert data["total_edges"] == len(c.edge_names) and data["budget"] == 7
    nodes = [n["name"] for n in data["nodes"]]
    qkv = ["", "<q>", "<k>", "<v>"]
    names = [f"{nodes[s]}->{nodes[d]}{qkv[q]}" for s, d, q, _ in data["edges"]]
    # the circuit's edges first (the budget), then the strongest others; each group by |score|
    assert set(names[:7]) == {e.name for e in c.edges}
    strongest = sorted(range(len(c.edge_names)), key=lambda i: -abs(float(c.edge_scores[i])))[: vh.MAX_DRAWN_EDGES]
    assert names[7:] == [c.edge_names[i] for i in strongest]
    for group in (data["edges"][:7], data["edges"][7:]):
        scores = [abs(e[3]) for e in group]
        assert scores == sorted(scores, reverse=True)
    by_name = dict(zip(c.edge_names, c.edge_scores.tolist()))
    assert all(abs(e[3] - by_name[n]) <= 1e-5 * abs(by_name[n]) for e, n in zip(data["edges"], names))


def test_circuit_edges_come_first_whatever_their_score(tmp_path, open_page):
    """A circuit that is not the top-k by |score| (pruned, ACDC, oracle) is what the page opens on."""
    c = make_circuit(n_layers=2, n_heads=2)
    keep = torch.zeros(len(c.edge_names), dtype=torch.bool)
    keep[c.edge_scores.abs().argsort()[:4]] = True  # the 4 weakest edges
    c = make_circuit(n_layers=2, n_heads=2, in_circuit=keep)
    page, errors = open_page(write_html(c, tmp_path / "c.html"))
    drawn = set(page.eval_on_selector_all("svg [data-edge]", "els => els.map(e => e.dataset.edge)"))
    assert drawn == {e.name for e in c.edges}
    assert page.locator("svg [data-edge][data-in='1']").count() == 4
    _slide(page, 6)  # then the two strongest edges outside the circuit, dashed
    assert page.locator("svg [data-edge][data-in='0']").count() == 2
    assert errors == []


def test_viewer_imports_no_model_code():
    root = Path(__file__).resolve().parents[2] / "mechkit" / "viewer"
    for py in root.glob("*.py"):
        text = py.read_text()
        for banned in ("transformer_lens", "mechkit.models", "mechkit.discovery", "mechkit.organisms", "load_model"):
            assert banned not in text, f"{py.name} imports {banned}"


def test_edgeless_circuits_render(tmp_path, open_page):
    nodes_only = make_circuit(edge_names=(), edge_scores=torch.zeros(0), in_circuit=torch.zeros(0, dtype=torch.bool),
                              node_scores={"F:blocks.1.hook_resid_post:7": 0.5, "L0H1": -0.25}, task={})
    empty = make_circuit(edge_names=(), edge_scores=torch.zeros(0), in_circuit=torch.zeros(0, dtype=torch.bool),
                         node_scores={}, faithfulness=())
    for i, c in enumerate((nodes_only, empty)):
        page, errors = open_page(write_html(c, tmp_path / f"{i}.html"))
        assert page.locator("svg [data-node]").count() == len(c.node_scores)
        assert page.locator("svg [data-edge]").count() == 0
        assert "top 0 of 0 edges" in page.locator(".mk-count").inner_text()
        assert errors == []
