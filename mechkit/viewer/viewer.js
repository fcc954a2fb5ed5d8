// mechkit circuit viewer: draws a circuit as a layered SVG graph. No dependencies.
// mechkitRender(root, data): root is the .mk-viewer element, data the payload from viewer/html.py.
function mechkitRender(root, data) {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 960, ROW = 64, PAD = 28, LEFT = 90, NODE_W = 46, NODE_H = 20;

  function el(tag, attrs, parent) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(x) {
    if (x === null || x === undefined) return "—";
    var a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? x.toExponential(3) : x.toFixed(4);
  }

  // --- summary panel ----------------------------------------------------------
  var dl = root.querySelector(".mk-summary");
  data.summary.forEach(function (row) {
    var dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = row[0];
    dd.textContent = row[1];
    dl.appendChild(dt);
    dl.appendChild(dd);
  });

  // --- layout: one row per node row index, embed at the bottom, logits on top --------------
  // rows that hold no node (e.g. MLP rows of attention-only models) are dropped
  var used = [];
  data.nodes.forEach(function (n) { if (used.indexOf(n.row) < 0) used.push(n.row); });
  used.sort(function (a, b) { return a - b; });
  var rank = {};
  used.forEach(function (r, i) { rank[r] = i; });
  var rows = {}, maxRow = Math.max(0, used.length - 1);
  data.nodes.forEach(function (n) { (rows[rank[n.row]] = rows[rank[n.row]] || []).push(n); });
  var H = PAD * 2 + maxRow * ROW + NODE_H;
  var pos = {};
  Object.keys(rows).forEach(function (r) {
    var list = rows[r], step = (W - LEFT - PAD) / list.length;
    list.forEach(function (n, i) {
      pos[n.name] = {x: LEFT + step * (i + 0.5), y: H - PAD - NODE_H / 2 - rank[n.row] * ROW};
    });
  });

  var svg = el("svg", {viewBox: "0 0 " + W + " " + H, width: "100%", class: "mk-graph", role: "img"});
  root.querySelector(".mk-canvas").appendChild(svg);
  var edgeLayer = el("g", {class: "mk-edges"}, svg);
  var nodeLayer = el("g", {class: "mk-nodes"}, svg);

  Object.keys(data.row_labels || {}).forEach(function (r) {
    if (!(r in rank)) return;
    var t = el("text", {x: 4, y: H - PAD - NODE_H / 2 - rank[r] * ROW, "dominant-baseline": "central", class: "mk-row"}, nodeLayer);
    t.textContent = data.row_labels[r];
  });

  var nodeEls = {};
  data.nodes.forEach(function (n) {
    var p = pos[n.name];
    var g = el("g", {"data-node": n.name, "data-kind": n.kind, class: "mk-node mk-" + n.kind,
                     transform: "translate(" + p.x + "," + p.y + ")"}, nodeLayer);
    el("rect", {x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 4}, g);
    var label = el("text", {"text-anchor": "middle", "dominant-baseline": "central"}, g);
    label.textContent = n.label;
    var title = el("title", {}, g);
    title.textContent = n.name + (n.score === null ? "" : "  score " + fmt(n.score)) +
      (n.in_circuit ? "  (in circuit)" : "");
    nodeEls[n.name] = g;
  });

  // edges arrive sorted by |score|, largest first: the budget k draws edges [0, k)
  var maxAbs = 0;
  data.edges.forEach(function (e) { maxAbs = Math.max(maxAbs, Math.abs(e[3])); });
  var QX = {q: -NODE_W / 3, k: 0, v: NODE_W / 3};

  function drawEdge(e) {
    var a = pos[e[0]], b = pos[e[1]];
    var rel = maxAbs > 0 ? Math.sqrt(Math.abs(e[3]) / maxAbs) : 1;  // sqrt: weak edges stay visible
    var x1 = a.x, y1 = a.y - NODE_H / 2, x2 = b.x + (e[2] ? QX[e[2]] : 0), y2 = b.y + NODE_H / 2;
    var dy = Math.max(20, (y1 - y2) / 2);
    var path = el("path", {
      d: "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 - dy) + " " + x2 + "," + (y2 + dy) + " " + x2 + "," + y2,
      "data-edge": e[5], "data-score": e[3], "data-in": e[4] ? "1" : "0",
      class: "mk-edge " + (e[3] >= 0 ? "mk-pos" : "mk-neg") + (e[4] ? " mk-in" : ""),
      "stroke-width": (0.6 + 4.4 * rel).toFixed(2), "stroke-opacity": (0.3 + 0.7 * rel).toFixed(3)
    }, edgeLayer);
    var title = el("title", {}, path);
    title.textContent = e[5] + "  score " + fmt(e[3]) + (e[4] ? "  (in circuit)" : "");
  }

  var slider = root.querySelector(".mk-budget"), count = root.querySelector(".mk-count");
  slider.max = String(data.edges.length);
  slider.value = String(Math.min(data.budget, data.edges.length));

  function redraw() {
    var k = Math.max(0, Math.min(data.edges.length, parseInt(slider.value, 10) || 0));
    while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
    var touched = {};
    for (var i = 0; i < k; i++) {
      drawEdge(data.edges[i]);
      touched[data.edges[i][0]] = touched[data.edges[i][1]] = true;
    }
    Object.keys(nodeEls).forEach(function (name) {
      nodeEls[name].setAttribute("class", nodeEls[name].getAttribute("class").replace(/ mk-idle/g, "") +
        (touched[name] ? "" : " mk-idle"));
    });
    var shown = data.total_edges > data.edges.length ? " (" + data.total_edges + " in the graph)" : "";
    count.textContent = "top " + k + " of " + data.edges.length + " edges by |score|" + shown;
  }
  slider.addEventListener("input", redraw);
  redraw();
}
