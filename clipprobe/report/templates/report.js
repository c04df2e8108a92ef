(function () {
  "use strict";
  function num(v, d) { return (typeof v === "number" && isFinite(v)) ? v.toFixed(d) : "\u2014"; }
  function tint(v) {
    if (typeof v !== "number" || !isFinite(v) || v === 0) return "";
    var a = Math.min(Math.abs(v) / 1.5, 1) * 0.45;
    return (v > 0 ? "rgba(202,0,32," : "rgba(5,113,176,") + a.toFixed(3) + ")";
  }
  function cell(tr, text, opts) {
    var td = document.createElement("td");
    td.textContent = text;
    if (opts && opts.num) td.className = "num";
    if (opts && opts.bg) td.style.background = opts.bg;
    if (opts && opts.title) td.title = opts.title;
    tr.appendChild(td);
    return td;
  }
  function compare(x, y, dir) {
    var xn = x === null || x === undefined, yn = y === null || y === undefined;
    if (xn || yn) return xn && yn ? 0 : (xn ? 1 : -1);
    if (typeof x === "number" && typeof y === "number") return (x - y) * dir;
    return String(x).localeCompare(String(y)) * dir;
  }

  // Static tables (summary, flagged): sort by a cell's data-v, else its text.
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, idx) {
      th.addEventListener("click", function () {
        var dir = th.classList.contains("desc") ? 1 : -1;
        Array.prototype.forEach.call(ths, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(dir === 1 ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ca = a.cells[idx], cb = b.cells[idx];
          var va = ca.hasAttribute("data-v") ? parseFloat(ca.getAttribute("data-v")) : ca.textContent;
          var vb = cb.hasAttribute("data-v") ? parseFloat(cb.getAttribute("data-v")) : cb.textContent;
          if (th.getAttribute("data-kind") === "num") {
            if (!ca.hasAttribute("data-v")) va = null;
            if (!cb.hasAttribute("data-v")) vb = null;
          }
          return compare(va, vb, dir);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });

  // The word table, built from the embedded JSON with textContent only.
  var data = JSON.parse(document.getElementById("clipprobe-data").textContent);
  var rows = data.words;
  var prompts = data.prompts || {};
  // the "flagged only" filter: against the control queries where that test ran, else the hypergeometric one
  var flagKey = data.flag === "n_flagged" ? "n_flagged" : "n_flagged_vs_controls";
  // a word may be "constructor" or "__proto__": look up own keys only
  function own(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }
  var body = document.getElementById("words-body");
  var search = document.getElementById("words-search");
  var attrSel = document.getElementById("words-attribute");
  var catSel = document.getElementById("words-category");
  var flagged = document.getElementById("words-flagged");
  var count = document.getElementById("words-count");
  var heads = document.querySelectorAll("#words-table th[data-key]");
  var state = { key: "max_skew", dir: -1 };
  function addOptions(select, values) {
    values.forEach(function (v) {
      var o = document.createElement("option");
      o.value = v; o.textContent = v; select.appendChild(o);
    });
  }
  addOptions(attrSel, data.attributes);
  addOptions(catSel, data.categories);
  function render() {
    var text = search.value.trim().toLowerCase();
    var shown = rows.filter(function (r) {
      if (attrSel.value && r.attribute !== attrSel.value) return false;
      if (catSel.value && r.categories.indexOf(catSel.value) < 0) return false;
      if (flagged.checked && !(r[flagKey] > 0)) return false;
      if (text && (r.word + " " + r.category + " " + r.top_group).toLowerCase().indexOf(text) < 0) return false;
      return true;
    });
    shown.sort(function (a, b) { return compare(a[state.key], b[state.key], state.dir) || compare(a.word, b.word, 1); });
    var frag = document.createDocumentFragment();
    shown.forEach(function (r) {
      var tr = document.createElement("tr");
      cell(tr, r.word, { title: (own(prompts, r.word) ? prompts[r.word] : []).join("\n") });
      cell(tr, r.category);
      cell(tr, r.attribute);
      cell(tr, r.top_group);
      cell(tr, num(r.max_skew, 2), { num: true, bg: tint(r.max_skew) });
      cell(tr, num(r.max_skew_excess, 2), { num: true, bg: tint(r.max_skew_excess) });
      cell(tr, num(r.p_max_skew, 3), { num: true });
      cell(tr, num(r.min_skew, 2), { num: true, bg: tint(r.min_skew) });
      cell(tr, num(r.norm_entropy, 3), { num: true });
      cell(tr, num(r.norm_entropy_mm, 3), { num: true });
      cell(tr, num(r.kl_to_base, 3), { num: true });
      cell(tr, num(r.ndkl_at_k, 3), { num: true });
      cell(tr, num(r.ndkl_full, 3), { num: true });
      cell(tr, num(r.stability, 2), { num: true });
      cell(tr, String(r.n_flagged_vs_controls === null ? "\u2014" : r.n_flagged_vs_controls), { num: true });
      cell(tr, String(r.n_flagged === null ? "\u2014" : r.n_flagged), { num: true });
      frag.appendChild(tr);
    });
    body.replaceChildren(frag);
    count.textContent = shown.length + " of " + rows.length + " rows";
    Array.prototype.forEach.call(heads, function (h) {
      h.classList.remove("asc", "desc");
      if (h.getAttribute("data-key") === state.key) h.classList.add(state.dir === 1 ? "asc" : "desc");
    });
  }
  Array.prototype.forEach.call(heads, function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      state = { key: key, dir: state.key === key ? -state.dir : (key === "word" || key === "category" || key === "attribute" || key === "top_group" ? 1 : -1) };
      render();
    });
  });
  [search, attrSel, catSel, flagged].forEach(function (el) { el.addEventListener("input", render); });
  render();
  document.body.setAttribute("data-rendered", String(rows.length));
})();
