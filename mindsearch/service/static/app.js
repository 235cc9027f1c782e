// mindsearch's page: plain JS against the service's JSON API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { truth: null };

function token() { return $("token").value.trim(); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + token() });
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

async function json(path, options) { return (await api(path, options)).json(); }

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function fill(select, items, label, value) {
  select.innerHTML = "";
  for (const item of items) {
    const opt = document.createElement("option");
    opt.value = value(item);
    opt.textContent = label(item);
    select.appendChild(opt);
  }
}

// Thumbnails need the bearer token, so they are fetched, not linked.
async function thumb(img, index, id, size) {
  try {
    const blob = await (await api(`/images/${encodeURIComponent(index)}/${id}?size=${size || 128}`)).blob();
    img.src = URL.createObjectURL(blob);
    img.dataset.loaded = "1";
  } catch (e) {
    img.alt = "no image: " + e.message;
    img.dataset.loaded = "0";
  }
}

async function load() {
  try {
    const [idx, runs, stores] = await Promise.all([json("/v1/indexes"), json("/v1/runs"), json("/v1/stores")]);
    fill($("index"), idx.indexes, (i) => `${i.name} (${i.count} images, v${i.version}, ${i.faiss})`, (i) => i.name);
    fill($("run"), runs.runs, (r) => `${r.name} (${r.model}, subject ${r.subject})`, (r) => r.name);
    fill($("store"), stores.stores, (s) => s, (s) => s);
    status(`${idx.indexes.length} index(es), ${runs.runs.length} run(s) served`);
  } catch (e) {
    status("cannot reach the service: " + e.message + " (is the token right?)", true);
    return;
  }
  try {
    const t = await json("/v1/trials?split=test&limit=500");
    fill($("trial"), t.trials, (r) => `trial ${r.trial} · session ${r.session} · image ${r.image_id}`,
      (r) => r.trial);
    $("trial").dataset.subject = t.subject;
  } catch (e) { /* no dataset: .npy uploads still work */ }
}

async function search() {
  const index = $("index").value, run = $("run").value, k = $("k").value || 16;
  const file = $("npy").files[0];
  const session = $("session").value;
  $("search").disabled = true;
  status("searching…");
  const t0 = performance.now();
  try {
    let answer;
    if (file) {
      const params = new URLSearchParams({ index, run, k });
      if (session) params.set("session", session);
      answer = await json("/v1/query?" + params, {
        method: "POST", headers: { "Content-Type": "application/x-npy" }, body: file,
      });
    } else {
      const trial = $("trial").value;
      if (trial === "") throw new Error("pick a trial or choose a .npy file");
      const body = { trial: Number(trial), index, run, k: Number(k) };
      if (session) body.session = Number(session);
      answer = await json("/v1/query", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    }
    const hits = answer.hits[0] || [];
    const truth = answer.truth ? answer.truth[0] : null;
    render(index, hits, truth);
    const kind = hits.length && hits[0].score_kind ? hits[0].score_kind : "kind not reported";
    const found = truth === null ? "" : (hits.some((h) => h.id === truth)
      ? ` · the true image ${truth} is at rank ${hits.find((h) => h.id === truth).rank}`
      : ` · the true image ${truth} is not in the top ${hits.length}`);
    status(`${hits.length} hits in ${Math.round(performance.now() - t0)} ms (score: ${kind})${found}`);
  } catch (e) {
    status(e.message, true);
  } finally {
    $("search").disabled = false;
  }
}

function render(index, hits, truth) {
  const box = $("hits");
  box.innerHTML = "";
  $("hitstitle").textContent = `top ${hits.length} of ${index}`;
  for (const h of hits) {
    const fig = document.createElement("figure");
    fig.className = "hit" + (h.id === truth ? " match" : "");
    fig.dataset.id = h.id;
    fig.dataset.rank = h.rank;
    const img = document.createElement("img");
    img.alt = `image ${h.id}`;
    img.title = h.path || "";
    img.draggable = true;
    img.addEventListener("dragstart", (ev) => {
      ev.dataTransfer.setData("application/x-mindsearch-image", JSON.stringify({ index, id: h.id }));
    });
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<span class="rank">#${h.rank}</span> · ${h.id}<br><span class="score">` +
      `${h.score.toFixed(4)} ${h.score_kind || ""}</span>`;
    fig.append(img, cap);
    box.appendChild(fig);
    thumb(img, index, h.id, 128);
  }
  const tb = $("truth");
  tb.hidden = truth === null;
  if (truth !== null) {
    const img = tb.querySelector("img");
    img.removeAttribute("src");
    thumb(img, index, truth, 256);
    tb.querySelector("figcaption").textContent = `image ${truth}`;
  }
}

async function brain(body, params, label) {
  status("looking for brain trials…");
  try {
    const k = $("k").value || 16;
    const q = new URLSearchParams(Object.assign({ store: $("store").value, k }, params || {}));
    const answer = await json("/v1/brain?" + q, body);
    const rows = answer.hits[0] || [];
    const tbody = $("brain").querySelector("tbody");
    tbody.innerHTML = "";
    const index = $("index").value;
    for (const r of rows) {
      const tr = document.createElement("tr");
      if (params && params.id !== undefined && r.image_id === params.id) tr.className = "match";
      for (const v of [r.rank, r.subject, r.session < 0 ? "-" : r.session, r.trial, r.image_id, r.score.toFixed(4)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      if (r.image_id >= 0) {
        const img = document.createElement("img");
        td.appendChild(img);
        thumb(img, index, r.image_id, 64);
      }
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    $("braintitle").textContent = `brain trials nearest to ${label} (store ${$("store").value})`;
    $("brainresults").hidden = false;
    status(`${rows.length} brain trials`);
  } catch (e) {
    status(e.message, true);
  }
}

function setupDrop() {
  const zone = $("drop");
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    const ref = ev.dataTransfer.getData("application/x-mindsearch-image");
    if (ref) {
      const { index, id } = JSON.parse(ref);
      brain({ method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ index, id }) }, { id }, `image ${id}`);
      return;
    }
    const file = ev.dataTransfer.files[0];
    if (file) {
      brain({ method: "POST", headers: { "Content-Type": file.type || "image/png" }, body: file },
        {}, file.name);
    }
  });
}

function init() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("mindsearch-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  $("token").value = sessionStorage.getItem("mindsearch-token") || "";
  $("token").addEventListener("change", () => { sessionStorage.setItem("mindsearch-token", token()); load(); });
  $("search").addEventListener("click", search);
  setupDrop();
  load();
}

init();
