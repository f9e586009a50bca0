// faceprep review page: a virtualised grid of every face, filters, histograms, a detail panel and
// keyboard decisions. Plain JavaScript, no build step, no external resources.
"use strict";
(() => {
  const TOKEN = document.querySelector('meta[name="faceprep-token"]').content;
  const CELL = 120; // px: a 112 px thumbnail + margins
  const SVG = "http://www.w3.org/2000/svg";
  const CODE = { keep: 1, reject: 2 };
  const DECISION = [null, "keep", "reject"];
  const SHORT = { score: "score", eye_distance: "small", filled: "filled", blur: "blur", yaw: "yaw",
    roll: "roll", duplicate: "dup" };
  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const sizer = $("sizer");
  const state = {
    summary: null, list: null, pos: new Int32Array(0), sel: -1, cols: 1, cells: new Map(), gen: 0,
    undo: [], detailId: null, query: 0, order: "asc", frame: 0, zoom: true, lastDetail: null,
  };
  // Timings read by bench/review_page.py and the browser test (ms since navigation start).
  const timing = { firstGrid: null, lastQuery: null, queries: 0 };
  window.faceprepTiming = timing;

  async function api(path, options) {
    const response = await fetch(path, options);
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error; } catch (_) { /* not JSON */ }
      const error = new Error(`${response.status}: ${message}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function post(path, body) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Faceprep-Token": TOKEN },
      body: JSON.stringify(body),
    });
  }

  let toastTimer = 0;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => el.classList.remove("show"), 1800);
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(a >= 1 ? 2 : 3);
  }

  // --- summary, selects, counts, histograms -----------------------------------------------------

  async function loadSummary() {
    const s = await api("/api/summary");
    state.summary = s;
    state.gen = s.generation;
    const reason = $("reason");
    const keepReason = reason.value;
    reason.length = 1;
    for (const r of s.reasons) reason.add(new Option(`${r.name} (${r.count})`, r.name));
    reason.value = s.reasons.some((r) => r.name === keepReason) ? keepReason : "";
    const sort = $("sort");
    const keepSort = sort.value;
    sort.length = 1;
    for (const f of s.filters) sort.add(new Option(f.label, f.name));
    sort.value = s.filters.some((f) => f.name === keepSort) ? keepSort : "order";
    renderCounts();
    renderHists();
  }

  function renderCounts() {
    const s = state.summary;
    const c = s.counts;
    $("counts").textContent =
      `${s.total} faces · faceprep kept ${c.kept}, rejected ${c.rejected} · ` +
      `you kept ${c.keep}, rejected ${c.reject} · ${c.effective_kept} in the dataset`;
  }

  function renderHists() {
    const box = $("hists");
    box.textContent = "";
    const s = state.summary;
    for (const f of s.filters) {
      const h = s.histograms[f.name];
      if (!h) continue;
      const fig = document.createElement("div");
      fig.className = "hist" + ($("sort").value === f.name ? " active" : "");
      fig.dataset.filter = f.name;
      fig.title = `sort by ${f.label}`;
      const title = document.createElement("div");
      title.className = "htitle";
      title.innerHTML = "<b></b> <span></span>";
      title.firstChild.textContent = f.label;
      title.lastChild.textContent = f.rule;
      const canvas = document.createElement("canvas");
      fig.append(title, canvas);
      box.append(fig);
      drawHist(canvas, h);
      fig.addEventListener("click", () => {
        $("sort").value = f.name;
        refresh();
      });
    }
  }

  function drawHist(canvas, h) {
    const W = 180, H = 60, ratio = window.devicePixelRatio || 1;
    canvas.width = W * ratio;
    canvas.height = (H + 12) * ratio;
    canvas.style.width = `${W}px`;
    canvas.style.height = `${H + 12}px`;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    const n = h.kept.length;
    const top = Math.max(1, ...h.kept.map((k, i) => k + h.rejected[i]));
    const bw = W / n;
    for (let i = 0; i < n; i++) {
      const kh = (h.kept[i] / top) * (H - 4);
      const rh = (h.rejected[i] / top) * (H - 4);
      g.fillStyle = "#3fb950";
      g.fillRect(i * bw + 0.5, H - kh, bw - 1, kh);
      g.fillStyle = "#f85149";
      g.fillRect(i * bw + 0.5, H - kh - rh, bw - 1, rh);
    }
    g.strokeStyle = "#f0b429";
    g.lineWidth = 2;
    for (const m of h.marks) {
      const x = ((m - h.lo) / (h.hi - h.lo)) * W;
      g.beginPath();
      g.moveTo(x, 0);
      g.lineTo(x, H);
      g.stroke();
    }
    g.fillStyle = "#9aa0a6";
    g.font = "10px system-ui, sans-serif";
    g.textBaseline = "top";
    g.fillText(fmt(h.lo), 2, H + 1);
    const hi = fmt(h.hi);
    g.fillText(hi, W - g.measureText(hi).width - 2, H + 1);
  }

  // --- the listing and the virtualised grid -----------------------------------------------------

  function posOf(id) {
    const i = id >= 0 && id < state.pos.length ? state.pos[id] : -1;
    return i === undefined ? -1 : i;
  }

  function dropCell(el) {
    const img = el.firstChild;
    if (!img.complete) img.removeAttribute("src"); // cancels its request: the connection is freed
    el.remove();
  }

  async function refresh() {
    const started = performance.now();
    const ticket = ++state.query;
    // thumbnails still loading hold the browser's few connections: cancel them so the listing goes first
    for (const el of state.cells.values()) if (!el.firstChild.complete) el.firstChild.removeAttribute("src");
    const params = new URLSearchParams({
      status: $("status").value, reason: $("reason").value, sort: $("sort").value, order: state.order,
    });
    let list;
    try {
      list = await api(`/api/faces?${params}`);
    } catch (error) {
      toast(`could not list faces: ${error.message}`);
      return;
    }
    if (ticket !== state.query) return; // a newer request is on its way
    if (list.generation !== state.gen) {
      await loadSummary(); // the dataset changed on disk: ids were renumbered
      return refresh();
    }
    const selected = state.sel >= 0 && state.list ? state.list.ids[state.sel] : null;
    state.list = list;
    state.pos = new Int32Array(state.summary.total).fill(-1); // face id -> position in the listing
    list.ids.forEach((id, i) => { state.pos[id] = i; });
    state.sel = selected !== null ? posOf(selected) : -1;
    for (const fig of document.querySelectorAll(".hist")) {
      fig.classList.toggle("active", fig.dataset.filter === $("sort").value);
    }
    relayout(true);
    grid.dataset.count = String(list.total);
    $("shown").textContent = `${list.total} shown`;
    const ended = performance.now();
    timing.lastQuery = { start: started, end: ended, ms: ended - started, total: list.total };
    timing.queries += 1;
    if (timing.firstGrid === null) timing.firstGrid = ended;
    document.body.dataset.ready = String(ticket); // the number of the listing now on screen
  }

  function relayout(clear) {
    const cols = Math.max(1, Math.floor(grid.clientWidth / CELL));
    if (clear || cols !== state.cols) {
      for (const el of state.cells.values()) dropCell(el);
      state.cells.clear();
    }
    state.cols = cols;
    const n = state.list ? state.list.ids.length : 0;
    sizer.style.height = `${Math.ceil(n / cols) * CELL}px`;
    let empty = grid.querySelector(".empty");
    if (n === 0 && state.list) {
      if (!empty) {
        empty = document.createElement("div");
        empty.className = "empty";
        grid.append(empty);
      }
      empty.textContent = "no faces match these filters";
    } else if (empty) {
      empty.remove();
    }
    render();
  }

  function render() {
    if (!state.list) return;
    const n = state.list.ids.length, cols = state.cols;
    const top = grid.scrollTop, height = grid.clientHeight;
    const r0 = Math.max(0, Math.floor(top / CELL) - 2);
    const r1 = Math.ceil((top + height) / CELL) + 2;
    const i0 = r0 * cols, i1 = Math.min(n, r1 * cols);
    for (const [i, el] of state.cells) {
      if (i < i0 || i >= i1) {
        dropCell(el);
        state.cells.delete(i);
      }
    }
    const fresh = document.createDocumentFragment();
    for (let i = i0; i < i1; i++) {
      if (!state.cells.has(i)) {
        const el = makeCell(i);
        state.cells.set(i, el);
        fresh.append(el);
      }
    }
    grid.append(fresh);
  }

  function makeCell(i) {
    const L = state.list, id = L.ids[i], cols = state.cols;
    const el = document.createElement("div");
    el.className = "cell";
    el.dataset.i = String(i);
    el.dataset.id = String(id);
    el.style.transform = `translate(${(i % cols) * CELL}px, ${Math.floor(i / cols) * CELL}px)`;
    const img = new Image();
    img.decoding = "async";
    img.alt = "";
    img.addEventListener("error", () => img.hasAttribute("src") && el.classList.add("nothumb"));
    img.src = `/thumb/${id}`;
    const badges = document.createElement("div");
    badges.className = "badges";
    const names = state.summary.reasons;
    for (let b = 0; b < names.length; b++) {
      if ((L.reasons[i] >> b) & 1) {
        const span = document.createElement("span");
        span.className = `badge r-${names[b].name}`;
        span.textContent = SHORT[names[b].name] || names[b].name;
        badges.append(span);
      }
    }
    const mark = document.createElement("span");
    mark.className = "mark";
    el.append(img, badges, mark);
    if (L.value) {
      const val = document.createElement("span");
      val.className = "val";
      val.textContent = fmt(L.value[i]);
      el.append(val);
    }
    paintCell(el, i);
    return el;
  }

  function paintCell(el, i) {
    const L = state.list;
    const decision = DECISION[L.decision[i]];
    el.classList.toggle("rejected", L.status[i] === 1);
    el.classList.toggle("d-keep", decision === "keep");
    el.classList.toggle("d-reject", decision === "reject");
    el.classList.toggle("sel", i === state.sel);
    el.querySelector(".mark").textContent = decision === "keep" ? "✓ kept" : decision === "reject" ? "✗ rejected" : "";
    el.title = `${L.status[i] === 1 ? "rejected" : "kept"} by faceprep` + (decision ? `; you: ${decision}` : "");
  }

  function repaint(i) {
    const el = state.cells.get(i);
    if (el) paintCell(el, i);
  }

  grid.addEventListener("scroll", () => {
    if (!state.frame) {
      state.frame = requestAnimationFrame(() => {
        state.frame = 0;
        render();
      });
    }
  });
  new ResizeObserver(() => relayout(false)).observe(grid);
  grid.addEventListener("click", (event) => {
    const cell = event.target.closest(".cell");
    if (cell) select(Number(cell.dataset.i), true);
  });

  // --- selection, keyboard, decisions -----------------------------------------------------------

  function select(i, open) {
    const L = state.list;
    if (!L || L.ids.length === 0) return;
    i = Math.max(0, Math.min(L.ids.length - 1, i));
    const previous = state.sel;
    state.sel = i;
    if (previous >= 0) repaint(previous);
    const row = Math.floor(i / state.cols);
    if (row * CELL < grid.scrollTop) grid.scrollTop = row * CELL;
    else if ((row + 1) * CELL > grid.scrollTop + grid.clientHeight) {
      grid.scrollTop = (row + 1) * CELL - grid.clientHeight;
    }
    render();
    repaint(i);
    if (open || !$("detail").hidden) showDetail(L.ids[i]);
  }

  async function decide(decision) {
    const L = state.list, i = state.sel;
    if (!L || i < 0) {
      toast("select a face first (arrow keys or click)");
      return;
    }
    const id = L.ids[i];
    const previous = DECISION[L.decision[i]];
    if (!(await send(id, decision))) return;
    state.undo.push({ id, previous });
    toast(`${decision === "keep" ? "kept" : "rejected"}: ${state.detailSource || `face ${id}`}`);
    if (i + 1 < L.ids.length) select(i + 1);
  }

  async function undo() {
    const last = state.undo.pop();
    if (!last) {
      toast("nothing to undo");
      return;
    }
    if (!(await send(last.id, last.previous))) return;
    toast("undone");
    if (posOf(last.id) >= 0) select(posOf(last.id));
  }

  async function send(id, decision) {
    let result;
    try {
      result = await post("/api/decision", { id, decision, generation: state.gen });
    } catch (error) {
      toast(`not saved: ${error.message}`);
      if (error.status === 409) {
        await loadSummary();
        await refresh();
      }
      return false;
    }
    Object.assign(state.summary.counts, result.counts);
    renderCounts();
    const i = posOf(id);
    if (i >= 0) {
      state.list.decision[i] = decision ? CODE[decision] : 0;
      repaint(i);
    }
    if (state.detailId === id) showDetail(id);
    return true;
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest("select, input, textarea")) return;
    const sel = state.sel, cols = state.cols;
    switch (event.key) {
      case "ArrowRight": select(sel < 0 ? 0 : sel + 1); break;
      case "ArrowLeft": select(sel < 0 ? 0 : sel - 1); break;
      case "ArrowDown": select(sel < 0 ? 0 : sel + cols); break;
      case "ArrowUp": select(sel < 0 ? 0 : sel - cols); break;
      case "k": decide("keep"); break;
      case "r": decide("reject"); break;
      case "u": undo(); break;
      case "Enter": if (sel >= 0) showDetail(state.list.ids[sel]); break;
      case "Escape": closeDetail(); break;
      default: return;
    }
    event.preventDefault();
  });

  // --- the detail panel -------------------------------------------------------------------------

  async function showDetail(id) {
    state.detailId = id;
    let d;
    try {
      d = await api(`/api/face/${id}`);
    } catch (error) {
      toast(`could not load face ${id}: ${error.message}`);
      return;
    }
    if (state.detailId !== id) return;
    state.detailSource = `${d.source} #${d.face_index}`;
    const panel = $("detail");
    const opening = panel.hidden;
    panel.hidden = false;
    panel.dataset.id = String(id);
    $("dtitle").textContent = `${d.source} · face ${d.face_index}`;
    const status = $("dstatus");
    status.textContent = "";
    const pill = (cls, text) => {
      const span = document.createElement("span");
      span.className = `pill ${cls}`;
      span.textContent = text;
      status.append(span);
    };
    pill(d.status, `${d.status} by faceprep`);
    for (const r of d.reasons) {
      const span = document.createElement("span");
      span.className = `badge r-${r}`;
      span.textContent = r;
      status.append(span);
    }
    if (d.decision) pill("review", `${d.decision === "keep" ? "kept" : "rejected"} by you`);
    drawSource(d);
    $("dcrop").src = `/crop/${id}`;
    const dup = $("ddup");
    if (d.duplicate) {
      dup.hidden = false;
      $("ddupimg").src = `/crop/${d.duplicate.id}`;
      $("ddupcap").textContent =
        `nearest kept face: ${d.duplicate.distance} bits apart (${d.duplicate.source})`;
      dup.onclick = () => {
        if (posOf(d.duplicate.id) >= 0) select(posOf(d.duplicate.id), true);
        else showDetail(d.duplicate.id);
      };
    } else {
      dup.hidden = true;
    }
    const body = $("dfilters").tBodies[0];
    body.textContent = "";
    for (const f of d.filters) {
      const row = body.insertRow();
      row.className = f.passed ? "pass" : "fail";
      row.insertCell().textContent = f.label;
      const value = row.insertCell();
      value.className = "num";
      value.textContent = fmt(f.value);
      row.insertCell().textContent = f.rule;
      row.insertCell();
    }
    $("drecord").textContent = JSON.stringify(d.record, null, 1);
    state.lastDetail = d;
    if (opening) relayout(false);
  }

  function drawSource(d) {
    const box = $("dsource");
    box.textContent = "";
    if (!d.source_image) {
      const p = document.createElement("div");
      p.className = "missing";
      p.textContent = "source photo not available (start the review with --src SRC)";
      box.append(p);
      return;
    }
    const { width: W, height: H } = d.source_image;
    const rec = d.record;
    const corners = [...(rec.quad || [])];
    if (rec.box) corners.push([rec.box[0], rec.box[1]], [rec.box[2], rec.box[3]]);
    let view = [0, 0, W, H];
    if (state.zoom && corners.length) {
      const xs = corners.map((p) => p[0]), ys = corners.map((p) => p[1]);
      const side = Math.min(Math.max(W, H), 1.5 * Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys)));
      const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
      const fit = (c, n) => (side >= n ? (n - side) / 2 : Math.max(0, Math.min(n - side, c - side / 2)));
      view = [fit(cx, W), fit(cy, H), side, side];
    }
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", view.join(" "));
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    const el = (name, attrs) => {
      const node = document.createElementNS(SVG, name);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      node.setAttribute("vector-effect", "non-scaling-stroke");
      svg.append(node);
      return node;
    };
    el("image", { href: `/source/${d.id}`, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none" });
    if (rec.box) {
      const [x0, y0, x1, y1] = rec.box;
      el("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: "#ffd33d", "stroke-width": 2 });
    }
    if (rec.quad) {
      el("polygon", { points: rec.quad.map((p) => p.join(",")).join(" "), fill: "none", stroke: "#39c5cf", "stroke-width": 2 });
      const [a, , , b] = rec.quad; // corners: top-left, bottom-left, bottom-right, top-right
      el("line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], stroke: "#39c5cf", "stroke-width": 5 });
    }
    const r = Math.max(view[2], view[3]) / (state.zoom ? 80 : 250);
    for (const [x, y] of rec.landmarks || []) {
      el("circle", { cx: x, cy: y, r, fill: "#ff5c8a", stroke: "#000", "stroke-width": 1 });
    }
    box.append(svg);
  }

  function closeDetail() {
    if ($("detail").hidden) return;
    $("detail").hidden = true;
    state.detailId = null;
    relayout(false);
    grid.focus();
  }

  // --- wiring -----------------------------------------------------------------------------------

  for (const id of ["status", "reason", "sort"]) {
    $(id).addEventListener("change", () => {
      refresh();
      $(id).blur(); // back to the grid's keys
    });
  }
  $("order").addEventListener("click", () => {
    state.order = state.order === "asc" ? "desc" : "asc";
    $("order").textContent = state.order === "asc" ? "↑ asc" : "↓ desc";
    refresh();
  });
  $("histtoggle").addEventListener("click", () => {
    const hists = $("hists");
    hists.hidden = !hists.hidden;
    $("histtoggle").setAttribute("aria-pressed", String(!hists.hidden));
    relayout(false);
  });
  $("dclose").addEventListener("click", closeDetail);
  $("dzoom").addEventListener("click", () => {
    state.zoom = !state.zoom;
    $("dzoom").textContent = state.zoom ? "whole photo" : "zoom to the face";
    if (state.lastDetail) drawSource(state.lastDetail);
  });
  $("bkeep").addEventListener("click", () => decide("keep"));
  $("breject").addEventListener("click", () => decide("reject"));
  $("bundo").addEventListener("click", undo);

  loadSummary()
    .then(refresh)
    .catch((error) => toast(`could not load the dataset: ${error.message}`));
})();
