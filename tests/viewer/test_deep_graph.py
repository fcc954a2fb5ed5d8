"""The viewer on a 30-layer, 9-head graph (SmolLM2-135M's shape: 123,211 edges): unused nodes
fold per row, zoom and pan work, labels are drawn only where they can be read, and the page
carries the circuit plus a bounded number of other edges, not all 123k scores."""

import torch

from mechkit.viewer import circuit_html, payload, write_html
from mechkit.viewer import html as vh
from tests.artifacts.helpers import graph_edges, make_circuit

N_LAYERS, N_HEADS = 30, 9
N_NODES = 2 + N_LAYERS * (N_HEADS + 1)  # embed, logits, heads, MLPs
CHOSEN = {"embed", "L0H1", "L3H3", "M3", "L9H0", "L9H7", "M14", "L21H2", "L27H5", "L29H8", "M29", "logits"}


def _deep_circuit():
    names = graph_edges(N_LAYERS, N_HEADS)
    assert len(names) == 123_211
    keep = torch.tensor([e.split("->")[0] in CHOSEN and e.split("->")[1].split("<")[0] in CHOSEN for e in names])
    return make_circuit(n_layers=N_LAYERS, n_heads=N_HEADS, in_circuit=keep, selection={"rule": "hand-picked"})


def _scale(page) -> float:
    return float(page.get_attribute("svg.mk-graph", "data-scale"))


def _visible_nodes(page) -> set[str]:
    return set(page.eval_on_selector_all(
        "svg .mk-node", "els => els.filter(e => getComputedStyle(e).display !== 'none').map(e => e.dataset.node)"))


def test_page_carries_the_circuit_and_a_bounded_rest():
    c = _deep_circuit()
    data = payload(c)
    n_in = int(c.in_circuit.sum())
    assert len(data["nodes"]) == N_NODES and data["folded"]
    assert data["budget"] == n_in and len(data["edges"]) == n_in + vh.MAX_DRAWN_EDGES
    # all 123k scores inline would be megabytes; the circuit plus 5,000 others is a few hundred kB
    size = len(circuit_html(c).encode())
    assert size < 400_000, size


def test_unused_nodes_fold_per_row(tmp_path, open_page):
    c = _deep_circuit()
    page, errors = open_page(write_html(c, tmp_path / "deep.html"))
    assert set(c.nodes) == CHOSEN
    assert _visible_nodes(page) == CHOSEN
    drawn = page.eval_on_selector_all("svg [data-edge]", "els => els.map(e => e.dataset.edge)")
    assert sorted(drawn) == sorted(e.name for e in c.edges)
    folds = page.eval_on_selector_all("svg .mk-fold", "els => els.map(e => [e.dataset.fold, +e.dataset.hidden])")
    hidden = dict(folds)
    assert sum(hidden.values()) == N_NODES - len(CHOSEN)
    assert hidden["layer 9 attn"] == N_HEADS - 2 and hidden["layer 4 MLP"] == 1 and hidden["layer 5 attn"] == N_HEADS
    assert "layer 3 MLP" not in hidden and "embed" not in hidden  # nothing folded there
    assert f"{N_NODES - len(CHOSEN)} of {N_NODES} nodes folded" in page.locator(".mk-folded-count").inner_text()

    page.click(".mk-fold-toggle")  # show everything: unused nodes come back, dimmed
    assert len(_visible_nodes(page)) == N_NODES
    assert page.locator("svg .mk-fold").count() == 0
    assert page.locator("svg .mk-node.mk-idle").count() == N_NODES - len(CHOSEN)
    page.click(".mk-fold-toggle")
    assert _visible_nodes(page) == CHOSEN

    # a larger edge budget draws nodes outside the circuit, which unfold where they sit
    page.eval_on_selector(".mk-budget", "el => { el.value = String(+el.value + 200); el.dispatchEvent(new Event('input')); }")
    assert len(_visible_nodes(page)) > len(CHOSEN)
    assert page.locator("svg [data-edge][data-in='0']").count() == 200
    assert errors == []


def test_zoom_pan_and_fit(tmp_path, open_page):
    page, errors = open_page(write_html(_deep_circuit(), tmp_path / "deep.html"))
    for control in (".mk-zoom-in", ".mk-zoom-out", ".mk-fit"):
        assert page.locator(control).is_visible()
    fit = _scale(page)
    graph = page.locator("svg.mk-graph").bounding_box()
    world = page.locator("svg .mk-world").bounding_box()  # the fitted graph lies inside the view
    assert world["y"] >= graph["y"] - 1 and world["y"] + world["height"] <= graph["y"] + graph["height"] + 1
    page.click(".mk-zoom-in")
    page.click(".mk-zoom-in")
    assert abs(_scale(page) - fit * 1.25 ** 2) < 1e-3
    page.click(".mk-zoom-out")
    assert abs(_scale(page) - fit * 1.25) < 1e-3
    page.click(".mk-fit")
    assert abs(_scale(page) - fit) < 1e-4

    # the wheel zooms about the pointer: the point under it stays put
    x, y = graph["x"] + graph["width"] * 0.6, graph["y"] + graph["height"] * 0.5
    before = page.locator("svg [data-node='M14']").bounding_box()
    page.mouse.move(x, y)
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"+document.querySelector('svg.mk-graph').dataset.scale > {fit * 1.5}")
    after = page.locator("svg [data-node='M14']").bounding_box()
    k = _scale(page) / fit
    assert abs((after["x"] + after["width"] / 2 - x) - k * (before["x"] + before["width"] / 2 - x)) < 2

    # dragging pans by the pointer's movement
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y + 80, steps=4)
    page.mouse.up()
    moved = page.locator("svg [data-node='M14']").bounding_box()
    assert abs(moved["x"] - after["x"] + 120) < 1.5 and abs(moved["y"] - after["y"] - 80) < 1.5
    assert errors == []


def test_labels_stay_readable(tmp_path, open_page):
    page, errors = open_page(write_html(_deep_circuit(), tmp_path / "deep.html"))

    def axis():  # the layer labels on screen: text and top edge
        return page.eval_on_selector_all(
            "svg .mk-row", "els => els.filter(e => getComputedStyle(e).display !== 'none')"
            ".map(e => [e.textContent, e.getBoundingClientRect().top])")

    def label_shown(node):
        return page.eval_on_selector(f"svg [data-node='{node}'] text", "e => getComputedStyle(e).display !== 'none'")

    # fitted, the 62 rows are too tight for every label: those drawn are apart, ends always named
    shown = axis()
    assert {"embed", "logits"} <= {t for t, _ in shown} and 10 <= len(shown) < 62
    tops = sorted(top for _, top in shown)
    assert min(b - a for a, b in zip(tops, tops[1:])) >= 12
    assert _scale(page) * 10 < 7 and not label_shown("M14")  # node labels too small to read: not drawn
    for _ in range(8):
        page.click(".mk-zoom-in")
    assert _scale(page) * 10 >= 7 and label_shown("M14")
    assert page.locator("svg [data-node='M14'] text").bounding_box()["height"] >= 7
    # zoomed in, every row on screen is named, and the axis stays at the left edge
    on_screen = [t for t, _ in axis()]
    assert len(on_screen) >= 4 and all("layer" in t for t in on_screen)
    left = page.locator("svg.mk-graph").bounding_box()["x"]
    xs = page.eval_on_selector_all("svg .mk-row", "els => els.filter(e => getComputedStyle(e).display !== 'none')"
                                   ".map(e => e.getBoundingClientRect().left)")
    assert all(abs(x - xs[0]) < 0.5 and x - left < 10 for x in xs)
    assert errors == []


def test_heads_keep_their_column_down_the_layers(tmp_path, open_page):
    page, errors = open_page(write_html(_deep_circuit(), tmp_path / "deep.html"))
    page.click(".mk-fold-toggle")
    x = {n: page.locator(f"svg [data-node='{n}']").bounding_box()["x"] for n in ("L0H1", "L17H1", "L29H1", "L29H8")}
    assert abs(x["L0H1"] - x["L17H1"]) < 0.5 and abs(x["L0H1"] - x["L29H1"]) < 0.5
    assert x["L29H8"] > x["L29H1"]
    assert errors == []


def test_hovering_a_node_highlights_its_edges(tmp_path, open_page):
    c = _deep_circuit()
    page, errors = open_page(write_html(c, tmp_path / "deep.html"))
    for _ in range(4):
        page.click(".mk-zoom-in")
    page.locator("svg [data-node='M14']").scroll_into_view_if_needed()
    page.hover("svg [data-node='M14'] rect", force=True)
    hot = set(page.eval_on_selector_all("svg .mk-edge.mk-hot", "els => els.map(e => e.dataset.edge)"))
    assert hot == {e.name for e in c.edges if "M14" in (e.src, e.dst)} and hot
    assert "mk-focus" in page.get_attribute(".mk-viewer", "class")
    page.mouse.move(1, 1)
    assert page.locator("svg .mk-edge.mk-hot").count() == 0
    assert errors == []
