// mechkit circuit viewer: draws a circuit as a layered SVG graph. No dependencies.
// mechkitRender(root, data): root is the .mk-viewer element, data the payload from viewer/html.py.
// The graph lives in world coordinates (W wide, H high); a translate+scale transform maps it
// to the screen, which the wheel, drag and buttons change. The layer axis is drawn in screen
// coordinates at the left, so it stays put and readable at every zoom.
function mechkitRender(root, data) {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 900, PAD = 28, RIGHT = 56, NODE_W = 46, NODE_H = 20, AXIS = 92;
  var LABEL_MIN_PX = 7;  // node labels are drawn only when they come out at least this tall on screen
  var QKV = ["", "q", "k", "v"];

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
  var ROW = used.length > 14 ? 44 : 64;  // deep models get tighter rows
  var rows = {}, maxRow = Math.max(0, used.length - 1), nCols = 0;
  data.nodes.forEach(function (n) {
    (rows[rank[n.row]] = rows[rank[n.row]] || []).push(n);
    if (n.col !== null && n.col !== undefined) nCols = Math.max(nCols, n.col + 1);
  });
  var H = PAD * 2 + maxRow * ROW + NODE_H;
  function rowY(r) { return H - PAD - NODE_H / 2 - r * ROW; }
  var pos = {};
  Object.keys(rows).forEach(function (r) {
    // heads sit in their head's column, so a column reads as one head index down the layers,
    // and a lone MLP in the column after the last head; other nodes share their row evenly
    var free = rows[r].filter(function (n) { return n.col === null || n.col === undefined; });
    var span = W - PAD - RIGHT, cols = nCols ? nCols + 1 : 0;
    rows[r].forEach(function (n) {
      var col = (n.col === null || n.col === undefined)
        ? (cols && n.kind === "mlp" && free.length === 1 ? nCols : null) : n.col;
      var x = col === null ? PAD + span / free.length * (free.indexOf(n) + 0.5) : PAD + span / cols * (col + 0.5);
      pos[n.name] = {x: x, y: rowY(+r)};
    });
  });

  var canvas = root.querySelector(".mk-canvas");
  var svg = el("svg", {width: "100%", class: "mk-graph", role: "img"});
  canvas.appendChild(svg);
  var world = el("g", {class: "mk-world"}, svg);
  var edgeLayer = el("g", {class: "mk-edges"}, world);
  var nodeLayer = el("g", {class: "mk-nodes"}, world);
  var foldLayer = el("g", {class: "mk-folds"}, world);
  var axis = el("g", {class: "mk-axis"}, svg);
  var axisBack = el("rect", {x: 0, y: 0, width: AXIS - 4, class: "mk-axis-back"}, axis);

  var axisLabels = [];
  Object.keys(data.row_labels || {}).forEach(function (r) {
    if (!(r in rank)) return;
    var t = el("text", {x: 6, "dominant-baseline": "central", class: "mk-row", "data-row": rank[r]}, axis);
    t.textContent = data.row_labels[r];
    axisLabels.push(t);
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

  // --- view: zoom and pan ---------------------------------------------------------------
  var view = {s: 1, tx: AXIS, ty: 0}, fitScale = 1;
  function size() {
    var w = svg.getBoundingClientRect().width || canvas.clientWidth || (W + AXIS);
    return {w: w, h: parseFloat(svg.getAttribute("height"))};
  }
  function apply() {
    world.setAttribute("transform", "translate(" + view.tx + "," + view.ty + ") scale(" + view.s + ")");
    var h = size().h, rowPx = ROW * view.s;
    axisBack.setAttribute("height", h);
    // labels at least 13 px apart; when rows are tighter, every other (the attention rows), ...
    var every = Math.max(1, Math.ceil(13 / Math.max(rowPx, 1e-6)));
    axisLabels.forEach(function (t) {
      var r = +t.getAttribute("data-row"), y = view.ty + view.s * rowY(r);
      t.setAttribute("y", y);
      var shown = r === 0 || r === maxRow || (r % every === 1 % every && (every === 1 || (r >= every && maxRow - r >= every)));
      t.style.display = shown && y > -8 && y < h + 8 ? "" : "none";
    });
    root.classList.toggle("mk-small", view.s * 10 < LABEL_MIN_PX);
    svg.setAttribute("data-scale", view.s.toFixed(4));
  }
  function fit() {
    var sz = size();
    fitScale = Math.min((sz.w - AXIS - 8) / W, (sz.h - 8) / H);
    view.s = fitScale;
    view.tx = AXIS + Math.max(0, (sz.w - AXIS - W * view.s) / 2);
    view.ty = (sz.h - H * view.s) / 2;
    apply();
  }
  function zoomAt(factor, mx, my) {
    var s = Math.max(fitScale * 0.5, Math.min(6, view.s * factor));
    view.tx = mx - (mx - view.tx) * s / view.s;
    view.ty = my - (my - view.ty) * s / view.s;
    view.s = s;
    apply();
  }
  // the page is at most 80% of the window tall (at least 360 px), less when the graph is shorter
  var width0 = size().w, natural = H * Math.min(1.2, (width0 - AXIS - 8) / W) + 8;
  var maxH = Math.max(360, Math.round(0.8 * (window.innerHeight || 900)));
  svg.setAttribute("height", Math.round(Math.min(natural, maxH)));

  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var box = svg.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - box.left, ev.clientY - box.top);
  }, {passive: false});
  var drag = null;
  svg.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) return;
    drag = {x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty};
    svg.classList.add("mk-dragging");
    if (svg.setPointerCapture) svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    view.tx = drag.tx + ev.clientX - drag.x;
    view.ty = drag.ty + ev.clientY - drag.y;
    apply();
  });
  function endDrag() { drag = null; svg.classList.remove("mk-dragging"); }
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  function centre(factor) { var sz = size(); zoomAt(factor, AXIS + (sz.w - AXIS) / 2, sz.h / 2); }
  root.querySelector(".mk-zoom-in").addEventListener("click", function () { centre(1.25); });
  root.querySelector(".mk-zoom-out").addEventListener("click", function () { centre(0.8); });
  root.querySelector(".mk-fit").addEventListener("click", fit);

  // --- edges ----------------------------------------------------------------------------
  // the circuit's edges come first (data.budget of them), then the strongest others, each
  // group by |score|, largest first: the budget k draws edges [0, k)
  var maxAbs = 0;
  data.edges.forEach(function (e) { maxAbs = Math.max(maxAbs, Math.abs(e[3])); });
  var QX = [0, -NODE_W / 3, 0, NODE_W / 3];
  function edgeName(e) {
    return data.nodes[e[0]].name + "->" + data.nodes[e[1]].name + (e[2] ? "<" + QKV[e[2]] + ">" : "");
  }

  function drawEdge(e, inCircuit) {
    var a = pos[data.nodes[e[0]].name], b = pos[data.nodes[e[1]].name], name = edgeName(e);
    var rel = maxAbs > 0 ? Math.sqrt(Math.abs(e[3]) / maxAbs) : 1;  // sqrt: weak edges stay visible
    var x1 = a.x, y1 = a.y - NODE_H / 2, x2 = b.x + QX[e[2]], y2 = b.y + NODE_H / 2;
    var dy = Math.max(20, (y1 - y2) / 2);
    var path = el("path", {
      d: "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 - dy) + " " + x2 + "," + (y2 + dy) + " " + x2 + "," + y2,
      "data-edge": name, "data-score": e[3], "data-in": inCircuit ? "1" : "0",
      class: "mk-edge " + (e[3] >= 0 ? "mk-pos" : "mk-neg") + (inCircuit ? " mk-in" : ""),
      "stroke-width": (0.6 + 4.4 * rel).toFixed(2), "stroke-opacity": (0.3 + 0.7 * rel).toFixed(3)
    }, edgeLayer);
    var title = el("title", {}, path);
    title.textContent = name + "  score " + fmt(e[3]) + (inCircuit ? "  (in circuit)" : "");
    [e[0], e[1]].forEach(function (i) { (edgesOf[i] = edgesOf[i] || []).push(path); });
  }

  // hovering a node highlights its drawn edges and dims the rest
  var edgesOf = {};
  data.nodes.forEach(function (n, i) {
    nodeEls[n.name].addEventListener("pointerenter", function () {
      if (drag) return;
      root.classList.add("mk-focus");
      (edgesOf[i] || []).forEach(function (p) { p.classList.add("mk-hot"); });
    });
    nodeEls[n.name].addEventListener("pointerleave", function () {
      root.classList.remove("mk-focus");
      (edgesOf[i] || []).forEach(function (p) { p.classList.remove("mk-hot"); });
    });
  });

  // --- folding: nodes that no drawn edge touches are hidden, counted per row -------------------
  var folded = !!data.folded;
  var foldButton = root.querySelector(".mk-fold-toggle"), foldCount = root.querySelector(".mk-folded-count");

  function refold(touched) {
    while (foldLayer.firstChild) foldLayer.removeChild(foldLayer.firstChild);
    var hidden = {}, nHidden = 0;
    data.nodes.forEach(function (n) {
      var g = nodeEls[n.name], idle = !touched[n.name];
      var cls = g.getAttribute("class").replace(/ mk-(idle|folded)/g, "");
      if (idle) cls += folded ? " mk-folded" : " mk-idle";
      g.setAttribute("class", cls);
      if (idle && folded) {
        (hidden[rank[n.row]] = hidden[rank[n.row]] || []).push(n.name);
        nHidden++;
      }
    });
    Object.keys(hidden).forEach(function (r) {
      var names = hidden[r];
      var g = el("g", {class: "mk-fold", "data-fold": data.row_labels[used[+r]] || String(used[+r]),
                       "data-hidden": names.length,
                       transform: "translate(" + (W - RIGHT / 2) + "," + rowY(+r) + ")"}, foldLayer);
      el("rect", {x: -RIGHT / 2 + 4, y: -NODE_H / 2 + 2, width: RIGHT - 8, height: NODE_H - 4, rx: 8}, g);
      var t = el("text", {"text-anchor": "middle", "dominant-baseline": "central"}, g);
      t.textContent = "+" + names.length;
      var title = el("title", {}, g);
      title.textContent = names.length + " folded: " + names.join(", ");
    });
    foldButton.textContent = folded ? "show all nodes" : "fold unused nodes";
    foldCount.textContent = folded ? nHidden + " of " + data.nodes.length + " nodes folded" : "";
  }

  var slider = root.querySelector(".mk-budget"), count = root.querySelector(".mk-count");
  slider.max = String(data.edges.length);
  slider.value = String(Math.min(data.budget, data.edges.length));
  var touched = {};

  function redraw() {
    var k = Math.max(0, Math.min(data.edges.length, parseInt(slider.value, 10) || 0));
    while (edgeLayer.firstChild) edgeLayer.removeChild(edgeLayer.firstChild);
    touched = {};
    edgesOf = {};
    if (!data.edges.length) data.nodes.forEach(function (n) { if (n.in_circuit) touched[n.name] = true; });
    for (var i = 0; i < k; i++) {
      drawEdge(data.edges[i], i < data.budget);
      touched[data.nodes[data.edges[i][0]].name] = touched[data.nodes[data.edges[i][1]].name] = true;
    }
    refold(touched);
    var shown = data.total_edges > data.edges.length ? " (" + data.total_edges + " in the graph)" : "";
    count.textContent = "top " + k + " of " + data.edges.length + " edges" + shown + ": the circuit's " +
      Math.min(k, data.budget) + " of " + data.budget + (k > data.budget ? ", then the strongest others" : "") +
      ", by |score|";
  }
  slider.addEventListener("input", redraw);
  foldButton.addEventListener("click", function () { folded = !folded; refold(touched); });
  redraw();
  fit();
}
