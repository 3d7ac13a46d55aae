/* featgeo review, the AANet page.
 *
 * Data: window.FEATGEO_REVIEW (data/review.js): per n_clusters the thresholds and one entry per
 * cluster. A cluster's training curves and vertex samples are in data/clusters/n{n}/c{id}.js,
 * loaded with a script tag on the first click (fetch does not work on file://).
 * Text from the corpus only ever reaches the page through textContent, never innerHTML.
 */
(function () {
  "use strict";
  var R = window.FEATGEO_REVIEW;
  var DRAW_ORDER = ["filtered", "none", "C", "B", "D", "A"];
  var LABELS = {
    A: "A: both strengths high", D: "D: elbows agree", B: "B: recon outlier",
    C: "C: archetypal outlier", none: "no category", filtered: "fails a quality filter"
  };
  var byN = {};
  R.summaries.forEach(function (s) {
    s.byId = {};
    s.clusters.forEach(function (c) { s.byId[c.id] = c; });
    byN[s.n_clusters] = s;
  });
  var details = {}, waiting = {}, current = null;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }
  function fmt(x, digits) { return x === null || x === undefined ? "–" : (+x).toPrecision(digits || 3); }
  /* Whitespace made visible (a newline or space trigger would otherwise show as nothing). */
  function visible(text) {
    if (/\S/.test(text)) return text;
    return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "␣") || "∅";
  }
  function catOf(c) { return c.failed_filters.length ? "filtered" : (c.category || "none"); }
  function byId(id) { return document.getElementById(id); }

  // -- filters ------------------------------------------------------------------------------
  function checkbox(id, label, color) {
    var box = el("input", {type: "checkbox", id: id});
    box.checked = true;
    box.addEventListener("change", refresh);
    var parts = [box];
    if (color) parts.push(el("span", {"class": "swatch", style: "background:" + color}));
    parts.push(label);
    return el("label", {"for": id}, parts);
  }
  var cr = R.criteria, f = cr.filters;
  byId("criteria").textContent = "Categories over the clusters passing the quality filters (at least " +
    f.min_latents + " latents, both curves " + (f.require_monotonic ? "monotonic to their elbow and " : "") +
    "falling at least " + f.min_pct_decrease + "%, elbow ks at most " + f.max_k_differential +
    " apart): A above mu + " + cr.sigma_a + " sigma on both axes, B / C above mu + " + cr.sigma_bc +
    " sigma, D equal elbow ks and both above mu.";
  R.n_clusters.forEach(function (n) {
    byId("filter-n-boxes").appendChild(checkbox("filter-n-" + n, String(n)));
  });
  DRAW_ORDER.slice().reverse().forEach(function (cat) {
    byId("filter-category-boxes").appendChild(
      checkbox("filter-category-" + cat, cat === "filtered" ? "failing" : cat, R.colors[cat]));
  });
  ["filter-quality", "filter-rank-min", "filter-rank-max", "filter-stage3"].forEach(function (id) {
    byId(id).addEventListener(id === "filter-quality" || id === "filter-stage3" ? "change" : "input", refresh);
  });
  if (!R.stage3) byId("filter-stage3").disabled = true;

  function shown(n, c) {
    if (!byId("filter-n-" + n).checked) return false;
    if (!byId("filter-category-" + catOf(c)).checked) return false;
    var q = byId("filter-quality").value;
    if (q === "pass" && c.failed_filters.length) return false;
    if (q === "fail" && !c.failed_filters.length) return false;
    var lo = byId("filter-rank-min").value, hi = byId("filter-rank-max").value;
    if (lo !== "" && (c.decoder_rank === null || c.decoder_rank < +lo)) return false;
    if (hi !== "" && (c.decoder_rank === null || c.decoder_rank > +hi)) return false;
    if (byId("filter-stage3").checked && !c.stage3) return false;
    return true;
  }

  // -- scatter per n ------------------------------------------------------------------------
  function thresholdShapes(t) {
    var shapes = [], notes = [];
    [["recon", "x"], ["arch", "y"]].forEach(function (pair) {
      var th = t[pair[0]], axis = pair[1];
      [["mu", "dot", "mu", 0], ["a", "dash", "A", 1], ["bc", "longdash", "B/C", 2]].forEach(function (line) {
        var v = th[line[0]];
        if (v === null) return;
        var shape = {type: "line", line: {color: "#555", width: 1, dash: line[1]}};
        if (axis === "x") Object.assign(shape, {x0: v, x1: v, y0: 0, y1: 1, xref: "x", yref: "paper"});
        else Object.assign(shape, {y0: v, y1: v, x0: 0, x1: 1, yref: "y", xref: "paper"});
        shapes.push(shape);
        notes.push(axis === "x"
          ? {x: v, y: 1 + 0.045 * line[3], xref: "x", yref: "paper", text: line[2], showarrow: false, yanchor: "bottom", font: {size: 10}}
          : {y: v, x: 1 + 0.05 * line[3], yref: "y", xref: "paper", text: line[2], showarrow: false, xanchor: "left", font: {size: 10}});
      });
    });
    return {shapes: shapes, annotations: notes};
  }

  function drawScatter(s) {
    var n = s.n_clusters, div = byId("scatter-n" + n);
    div.style.display = byId("filter-n-" + n).checked ? "" : "none";
    var traces = DRAW_ORDER.map(function (cat) {
      var pts = s.clusters.filter(function (c) {
        return catOf(c) === cat && c.recon_strength !== null && c.arch_strength !== null && shown(n, c);
      });
      return {
        type: "scatter", mode: "markers", name: LABELS[cat],
        x: pts.map(function (c) { return c.recon_strength; }),
        y: pts.map(function (c) { return c.arch_strength; }),
        customdata: pts.map(function (c) { return c.id; }),
        text: pts.map(function (c) {
          return "cluster " + c.id + " (" + c.n_latents + " latents)" + (c.stage3 ? ", Stage 3" : "");
        }),
        hovertemplate: "%{text}<br>recon %{x:.3f}, arch %{y:.3f}<extra></extra>",
        marker: {
          color: R.colors[cat], size: 9, opacity: cat === "filtered" ? 0.6 : 0.9,
          line: {color: "#000", width: pts.map(function (c) { return c.stage3 ? 2.5 : 0; })}
        }
      };
    });
    var t = thresholdShapes(s.thresholds);
    var layout = {
      title: {text: "n_clusters = " + n + " (" + s.n_passing + " of " + s.clusters.length + " pass the filters)", font: {size: 14}},
      xaxis: {title: {text: "recon-loss elbow strength"}, zeroline: false},
      yaxis: {title: {text: "archetypal-loss elbow strength"}, zeroline: false},
      margin: {l: 60, r: 70, t: 80, b: 50}, hovermode: "closest", showlegend: true,
      legend: {orientation: "h", y: -0.18}, shapes: t.shapes, annotations: t.annotations
    };
    Plotly.react(div, traces, layout, {displaylogo: false, responsive: true});
    if (!div._featgeoClick) {
      div.on("plotly_click", function (ev) { if (ev.points.length) show(n, ev.points[0].customdata); });
      div._featgeoClick = true;
    }
  }

  function drawList() {
    var rows = [];
    R.summaries.forEach(function (s) {
      s.clusters.forEach(function (c) { if (shown(s.n_clusters, c)) rows.push([s.n_clusters, c]); });
    });
    var rank = {A: 0, D: 1, B: 2, C: 3, none: 4, filtered: 5};
    rows.sort(function (a, b) {
      var d = rank[catOf(a[1])] - rank[catOf(b[1])];
      if (d) return d;
      var sa = (a[1].recon_strength || 0) + (a[1].arch_strength || 0);
      var sb = (b[1].recon_strength || 0) + (b[1].arch_strength || 0);
      return sb - sa || a[0] - b[0] || a[1].id - b[1].id;
    });
    var total = R.summaries.reduce(function (acc, s) { return acc + s.clusters.length; }, 0);
    var lo = byId("filter-rank-min").value, hi = byId("filter-rank-max").value;
    byId("visible-count").textContent = rows.length + " of " + total + " clusters shown" +
      (lo !== "" && hi !== "" && +lo > +hi ? " (decoder rank min > max)" : "");
    var limit = 500;
    var body = el("tbody", {}, rows.slice(0, limit).map(function (r) {
      var c = r[1];
      var tr = el("tr", {"data-key": r[0] + ":" + c.id}, [
        el("td", {}, [String(r[0])]), el("td", {}, [String(c.id)]),
        el("td", {}, [catOf(c) === "filtered" ? "–" : (c.category || "")]),
        el("td", {}, [fmt(c.recon_strength)]), el("td", {}, [fmt(c.arch_strength)]),
        el("td", {}, [String(c.n_latents)]), el("td", {}, [c.stage3 ? "✓" : ""])
      ]);
      if (current === r[0] + ":" + c.id) tr.className = "current";
      tr.addEventListener("click", function () { show(r[0], c.id); });
      return tr;
    }));
    var head = el("thead", {}, [el("tr", {}, ["n", "cluster", "cat.", "recon", "arch", "latents", "S3"].map(function (h) {
      return el("th", {}, [h]);
    }))]);
    var box = byId("cluster-list");
    box.textContent = "";
    box.appendChild(el("table", {}, [head, body]));
    if (rows.length > limit) box.appendChild(el("p", {"class": "note"}, ["first " + limit + " of " + rows.length + " shown; filter to narrow"]));
  }

  function refresh() {
    R.summaries.forEach(drawScatter);
    drawList();
  }

  // -- one cluster --------------------------------------------------------------------------
  function load(n, id) {
    var key = n + ":" + id;
    if (details[key]) return Promise.resolve(details[key]);
    return new Promise(function (resolve, reject) {
      waiting[key] = resolve;
      var script = el("script", {src: "data/clusters/n" + n + "/c" + id + ".js"});
      script.onerror = function () { reject(new Error("could not load " + script.src)); };
      document.body.appendChild(script);
    });
  }

  function clusterLoaded(n, id, data) {
    var key = n + ":" + id;
    details[key] = data;
    if (waiting[key]) { waiting[key](data); delete waiting[key]; }
  }

  function factsTable(c) {
    var rows = [
      ["category", !c.category ? (c.failed_filters.length ? "none (fails a filter)" : "none")
        : c.categories.length > 1 ? c.categories.join(", ") + " (shown as " + c.category + ")" : c.category],
      ["quality filters", c.failed_filters.length ? "fails: " + c.failed_filters.join(", ") : "passes"],
      ["latents", String(c.n_latents)],
      ["recon elbow k / strength", (c.recon_elbow_k === null ? "–" : c.recon_elbow_k) + " / " + fmt(c.recon_strength)],
      ["archetypal elbow k / strength", (c.arch_elbow_k === null ? "–" : c.arch_elbow_k) + " / " + fmt(c.arch_strength)],
      ["k differential", c.k_differential === null ? "–" : String(c.k_differential)],
      ["recommended k", c.recommended_k === null ? "–" : c.recommended_k + " (" + (c.recommended_criterion || "") + ")"],
      ["decoder rank / PCA rank", (c.decoder_rank === null ? "–" : c.decoder_rank) + " / " + (c.pca_rank === null ? "–" : c.pca_rank)],
      ["loss decrease recon / arch", fmt(c.recon_pct_decrease) + "% / " + fmt(c.arch_pct_decrease) + "%"]
    ];
    if (c.stage3) rows.push(["Stage 3", "category " + c.stage3.category + ", refit k " + c.stage3.refit_k]);
    return el("table", {"class": "facts"}, [el("tbody", {}, rows.map(function (r) {
      return el("tr", {}, [el("th", {}, [r[0]]), el("td", {}, [r[1]])]);
    }))]);
  }

  function lossPlot(div, c) {
    function mark(k, ys) {
      var i = c.ks.indexOf(k);
      return i < 0 ? [] : [[k], [ys[i]]];
    }
    var re = mark(c.recon_elbow_k, c.recon), ae = mark(c.arch_elbow_k, c.archetypal);
    var traces = [
      {x: c.ks, y: c.recon, name: "recon loss", mode: "lines+markers", line: {color: "#1f77b4"}},
      {x: c.ks, y: c.archetypal, name: "archetypal loss", mode: "lines+markers", yaxis: "y2", line: {color: "#2ca02c"}}
    ];
    if (re.length) traces.push({x: re[0], y: re[1], name: "recon elbow", mode: "markers", marker: {symbol: "star", size: 16, color: "#1f77b4"}});
    if (ae.length) traces.push({x: ae[0], y: ae[1], name: "archetypal elbow", mode: "markers", yaxis: "y2", marker: {symbol: "star", size: 16, color: "#2ca02c"}});
    var shapes = [], notes = [];
    if (c.recommended_k !== null) {
      shapes.push({type: "line", x0: c.recommended_k, x1: c.recommended_k, y0: 0, y1: 1, yref: "paper", line: {dash: "dash", color: "#d62728"}});
      notes.push({x: c.recommended_k, y: 1, yref: "paper", yanchor: "bottom", showarrow: false, text: "recommended k (" + (c.recommended_criterion || "") + ")", font: {size: 10, color: "#d62728"}});
    }
    Plotly.newPlot(div, traces, {
      title: {text: "Loss vs k", font: {size: 13}}, margin: {l: 55, r: 55, t: 45, b: 40},
      xaxis: {title: {text: "k (vertices)"}, dtick: 1},
      yaxis: {title: {text: "recon"}}, yaxis2: {title: {text: "archetypal"}, overlaying: "y", side: "right"},
      legend: {orientation: "h", y: -0.25}, shapes: shapes, annotations: notes
    }, {displaylogo: false, responsive: true});
  }

  function rankPlot(div, c) {
    Plotly.newPlot(div, [{
      type: "bar", x: ["latents", "decoder rank", "activation PCA rank"],
      y: [c.n_latents, c.decoder_rank, c.pca_rank], marker: {color: ["#999", "#1f77b4", "#ff7f0e"]}
    }], {title: {text: "Decoder rank vs PCA rank", font: {size: 13}}, margin: {l: 45, r: 20, t: 45, b: 40}},
    {displaylogo: false, responsive: true});
  }

  function trainingPlot(div, training) {
    var ks = Object.keys(training).sort(function (a, b) { return a - b; });
    if (!ks.length) { div.textContent = "No training curves (Stage 1 wrote none for this cluster)."; return; }
    Plotly.newPlot(div, ks.map(function (k) {
      return {x: training[k].step, y: training[k].loss, name: "k = " + k, mode: "lines"};
    }), {
      title: {text: "Training curves (total loss)", font: {size: 13}}, margin: {l: 55, r: 20, t: 45, b: 40},
      xaxis: {title: {text: "step"}}, yaxis: {title: {text: "loss"}, type: "log"}
    }, {displaylogo: false, responsive: true});
  }

  var CONTEXT = 24;  // tokens shown on each side of a trigger until "whole chunk" is clicked

  function chunkText(s, whole) {
    var marks = {}, keep = {};
    s.triggers.forEach(function (t) {
      marks[t.position] = t.distance;
      for (var i = t.position - CONTEXT; i <= t.position + CONTEXT; i++) keep[i] = true;
    });
    var text = el("div", {"class": "text"}), plain = "", gap = false;
    function flush() { if (plain) { text.appendChild(document.createTextNode(plain)); plain = ""; } }
    s.pieces.forEach(function (piece, i) {
      if (!whole && !keep[i]) { gap = true; return; }
      if (gap) { flush(); text.appendChild(el("span", {"class": "gap"}, [" … "])); gap = false; }
      if (marks.hasOwnProperty(i)) {
        flush();
        var shown = /\S/.test(piece) ? piece : visible(piece) + (piece.indexOf("\n") >= 0 ? "\n" : "");
        text.appendChild(el("span", {"class": "trigger", title: "token " + i + ", distance to the vertex " + marks[i]}, [shown]));
      } else {
        plain += piece;
      }
    });
    if (gap) { flush(); text.appendChild(el("span", {"class": "gap"}, [" … "])); }
    flush();
    return text;
  }

  function sampleNode(s) {
    var whole = false, text = chunkText(s, false);
    var toggle = el("button", {type: "button", "class": "expand"}, ["whole chunk"]);
    var node = el("div", {"class": "sample"}, [
      el("div", {"class": "source"}, [s.document + " (document " + s.doc_index + ", chunk " + s.chunk_index + "): " +
        s.triggers.length + " trigger" + (s.triggers.length === 1 ? "" : "s") + ", nearest at distance " + fmt(s.nearest) + " ", toggle]),
      text
    ]);
    toggle.addEventListener("click", function () {
      whole = !whole;
      var fresh = chunkText(s, whole);
      node.replaceChild(fresh, text);
      text = fresh;
      toggle.textContent = whole ? "context only" : "whole chunk";
    });
    return node;
  }

  function samplesNode(vs) {
    var st = vs.stats;
    var box = el("div", {id: "vertex-samples"}, [
      el("h3", {}, ["Vertex samples"]),
      el("p", {"class": "note"}, ["Tokens whose AANet coefficients lie within " + st.threshold +
        " of a vertex (||lambda - e_i||), from " + st.tokens_scanned + " held-out tokens; " +
        (R.samples_shown ? "up to " + R.samples_shown + " chunks per vertex shown, " : "") +
        "nearest first; trigger tokens highlighted with " + CONTEXT + " tokens of context."])
    ]);
    vs.vertices.forEach(function (v) {
      var words = v.top_words.map(function (w) { return visible(w[0]) + " (" + w[1] + ")"; }).join(", ");
      var node = el("div", {"class": "vertex", "data-vertex": String(v.vertex)}, [
        el("h3", {}, ["Vertex " + v.vertex]),
        el("p", {"class": "words"}, [v.triggers + " trigger tokens seen in the scan; " + v.records +
          " chunks kept, holding " + v.record_triggers + " of them" +
          (words ? "; commonest trigger words in the kept chunks: " + words : "")])
      ]);
      v.samples.forEach(function (s) { node.appendChild(sampleNode(s)); });
      if (!v.samples.length) node.appendChild(el("p", {"class": "note"}, ["No token came this close to the vertex."]));
      box.appendChild(node);
    });
    return box;
  }

  function show(n, id) {
    var c = byN[n] && byN[n].byId[id];
    if (!c) return;
    current = n + ":" + id;
    Array.prototype.forEach.call(document.querySelectorAll("#cluster-list tr"), function (tr) {
      tr.className = tr.getAttribute("data-key") === current ? "current" : "";
    });
    var detail = byId("detail");
    detail.textContent = "";
    detail.setAttribute("data-key", current);
    var loss = el("div", {"class": "plot", id: "loss-vs-k"}), ranks = el("div", {"class": "plot", id: "ranks"});
    var training = el("div", {"class": "plot", id: "training-curves"});
    detail.appendChild(el("h2", {}, ["n_clusters = " + n + ", cluster " + id]));
    detail.appendChild(factsTable(c));
    detail.appendChild(el("h3", {}, ["Latents (" + c.latents.length + ")"]));
    detail.appendChild(el("p", {"class": "latents"}, [c.latents.join(" ")]));
    detail.appendChild(el("div", {"class": "plots"}, [loss, training, ranks]));
    var status = el("p", {"class": "note", id: "detail-status"}, ["loading…"]);
    detail.appendChild(status);
    lossPlot(loss, c);
    rankPlot(ranks, c);
    load(n, id).then(function (data) {
      if (current !== n + ":" + id) return;
      trainingPlot(training, data.training);
      status.textContent = c.stage3
        ? (data.vertex_samples ? "" : "Stage 3 ran without vertex samples for this cluster.")
        : (R.stage3 ? "Not selected for Stage 3." : "No Stage 3 run given (--stage3-dir).");
      if (data.vertex_samples) detail.appendChild(samplesNode(data.vertex_samples));
      detail.setAttribute("data-loaded", "1");
    }, function (err) { status.textContent = err.message; });
  }

  /* Where a cluster's point is on the screen (viewport pixels), for tests and scripts. */
  function pointPosition(n, id) {
    var div = byId("scatter-n" + n), c = byN[n].byId[id], fl = div._fullLayout;
    var box = div.getBoundingClientRect();
    return {x: box.left + fl._size.l + fl.xaxis.l2p(c.recon_strength),
            y: box.top + fl._size.t + fl.yaxis.l2p(c.arch_strength)};
  }

  window.featgeoReview = {clusterLoaded: clusterLoaded, show: show, pointPosition: pointPosition};
  R.n_clusters.forEach(function (n) {
    byId("plots").appendChild(el("div", {"class": "scatter", id: "scatter-n" + n}));
  });
  refresh();
})();
