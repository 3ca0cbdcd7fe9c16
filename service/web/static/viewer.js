// The job page's three-plane viewer. Everything it shows comes from the REST API with the
// session cookie: /v1/jobs/{id}/view (the display grid in LPS mm and its planes), one PNG per
// slice and layer, the report, and POST /v1/jobs/{id}/refine for reviewer clicks.
//
// Display grid: voxel (i, j, k) lies at origin + (i, j, k) * spacing, i to the patient's left,
// j posterior, k superior. Axial shows (i, j) at k, coronal (i, k) at j, sagittal (j, k) at i;
// coronal and sagittal rows run from superior down (see service/viewer/volumes.py).
"use strict";

(() => {
  const root = document.getElementById("viewer");
  const jobId = root.dataset.jobId;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const api = `/v1/jobs/${jobId}`;
  const PLANES = ["axial", "coronal", "sagittal"];
  const LETTERS = {
    axial: { left: "R", right: "L", top: "A", bottom: "P" },
    coronal: { left: "R", right: "L", top: "S", bottom: "I" },
    sagittal: { left: "A", right: "P", top: "S", bottom: "I" },
  };
  const MAX_STAGE_PX = 380;
  const POLL_MS = 1000;
  const MAX_POLL_MS = 5000;

  const state = {
    view: null,
    index: {},
    window: null,
    lesion: true,
    isodose: true,
    qa: "off",
    mode: "navigate",
    pending: [],
    panels: {},
    busy: false,
  };

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      window.location.assign(`/ui/login?next=${encodeURIComponent(window.location.pathname)}`);
      throw new Error("logged out");
    }
    const body = await response.json();
    if (!response.ok) {
      const error = new Error(body.detail || response.statusText);
      error.code = body.code;
      throw error;
    }
    return body;
  }

  function say(id, text) {
    document.getElementById(id).textContent = text;
  }

  // --- geometry ------------------------------------------------------------------------------

  function voxelOf(plane, index, column, row) {
    const top = state.view.grid.size[2] - 1;
    if (plane === "axial") return [column, row, index];
    if (plane === "coronal") return [column, index, top - row];
    return [index, column, top - row];
  }

  function pixelOf(plane, voxel) {
    const top = state.view.grid.size[2] - 1;
    if (plane === "axial") return [voxel[0], voxel[1], voxel[2]];
    if (plane === "coronal") return [voxel[0], top - voxel[2], voxel[1]];
    return [voxel[1], top - voxel[2], voxel[0]];
  }

  function pointMm(voxel) {
    const { origin_mm: origin, spacing_mm: spacing } = state.view.grid;
    return voxel.map((v, axis) => Number((origin[axis] + v * spacing[axis]).toFixed(3)));
  }

  function voxelOfPoint(point) {
    const { origin_mm: origin, spacing_mm: spacing } = state.view.grid;
    return point.map((p, axis) => (p - origin[axis]) / spacing[axis]);
  }

  function currentVoxel() {
    return [state.index.sagittal, state.index.coronal, state.index.axial];
  }

  // --- panels --------------------------------------------------------------------------------

  function buildPanel(plane) {
    const info = state.view.planes[plane];
    const widthMm = info.width * info.pixel_mm[0];
    const heightMm = info.height * info.pixel_mm[1];
    const scale = MAX_STAGE_PX / Math.max(widthMm, heightMm);
    const panel = document.createElement("figure");
    panel.className = "view";
    panel.id = `view-${plane}`;
    panel.dataset.plane = plane;
    const letters = LETTERS[plane];
    panel.innerHTML = `
      <figcaption>${plane}</figcaption>
      <div class="view-stage">
        <img class="layer layer-image" alt="${plane} slice">
        <img class="layer layer-planning" alt="" hidden>
        <img class="layer layer-isodose" alt="" hidden>
        <img class="layer layer-lesion" alt="" hidden>
        <canvas class="layer layer-marks"></canvas>
        <span class="letter left">${letters.left}</span><span class="letter right">${letters.right}</span>
        <span class="letter top">${letters.top}</span><span class="letter bottom">${letters.bottom}</span>
      </div>
      <div class="slice-controls">
        <input type="range" class="slice-slider" min="0" max="${info.count - 1}" step="1" aria-label="${plane} slice">
        <span class="slice-index"></span>
      </div>`;
    const stage = panel.querySelector(".view-stage");
    stage.style.width = `${Math.round(widthMm * scale)}px`;
    stage.style.height = `${Math.round(heightMm * scale)}px`;
    const marks = panel.querySelector(".layer-marks");
    marks.width = Math.round(widthMm * scale);
    marks.height = Math.round(heightMm * scale);
    const slider = panel.querySelector(".slice-slider");
    slider.addEventListener("input", () => setIndex(plane, Number(slider.value)));
    stage.addEventListener("wheel", (event) => {
      event.preventDefault();
      setIndex(plane, state.index[plane] + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    stage.addEventListener("click", (event) => onStageClick(plane, event));
    panel.tabIndex = 0;
    panel.addEventListener("keydown", (event) => {
      if (event.key === "ArrowUp" || event.key === "PageUp") setIndex(plane, state.index[plane] + 1);
      else if (event.key === "ArrowDown" || event.key === "PageDown") setIndex(plane, state.index[plane] - 1);
      else return;
      event.preventDefault();
    });
    document.getElementById("planes").appendChild(panel);
    state.panels[plane] = panel;
  }

  function sliceUrl(plane, layer) {
    const query = new URLSearchParams({ layer, window: state.window, v: state.view.version });
    return `${api}/view/${plane}/${state.index[plane]}?${query}`;
  }

  function loadLayer(img, url, shown) {
    img.hidden = !shown;
    if (!shown || img.dataset.url === url) return Promise.resolve();
    img.dataset.url = url;
    return new Promise((resolve) => {
      img.onload = () => {
        img.dataset.loaded = url;
        resolve();
      };
      img.onerror = () => resolve();
      img.src = url;
    });
  }

  function renderPanel(plane) {
    const panel = state.panels[plane];
    const layers = state.view.layers;
    const index = state.index[plane];
    panel.dataset.index = String(index);
    panel.querySelector(".slice-slider").value = String(index);
    panel.querySelector(".slice-index").textContent = `${index + 1} / ${state.view.planes[plane].count}`;
    const base = state.qa === "checkerboard" && layers.planning ? "checkerboard" : "image";
    const loads = [
      loadLayer(panel.querySelector(".layer-image"), sliceUrl(plane, base), true),
      loadLayer(panel.querySelector(".layer-planning"), sliceUrl(plane, "planning"), state.qa === "overlay" && layers.planning),
      loadLayer(panel.querySelector(".layer-isodose"), sliceUrl(plane, "isodose"), state.isodose && layers.isodose),
      loadLayer(panel.querySelector(".layer-lesion"), sliceUrl(plane, "lesion"), state.lesion && layers.lesion),
    ];
    drawMarks(plane);
    return Promise.all(loads);
  }

  function renderAll() {
    return Promise.all(PLANES.map(renderPanel));
  }

  function setIndex(plane, index) {
    const count = state.view.planes[plane].count;
    const clipped = Math.min(Math.max(index, 0), count - 1);
    if (clipped === state.index[plane]) return;
    state.index[plane] = clipped;
    renderPanel(plane);
    PLANES.filter((other) => other !== plane).forEach(drawMarks);
  }

  // Crosshair through the other planes' slices, and the clicks (sent and pending) on this slice.
  function drawMarks(plane) {
    const canvas = state.panels[plane].querySelector(".layer-marks");
    const context = canvas.getContext("2d");
    const info = state.view.planes[plane];
    const sx = canvas.width / info.width;
    const sy = canvas.height / info.height;
    context.clearRect(0, 0, canvas.width, canvas.height);
    const [column, row] = pixelOf(plane, currentVoxel());
    context.strokeStyle = "rgba(0, 200, 255, 0.45)";
    context.lineWidth = 1;
    context.beginPath();
    context.moveTo((column + 0.5) * sx, 0);
    context.lineTo((column + 0.5) * sx, canvas.height);
    context.moveTo(0, (row + 0.5) * sy);
    context.lineTo(canvas.width, (row + 0.5) * sy);
    context.stroke();
    const clicks = [...state.view.clicks.map((c) => ({ ...c, sent: true })), ...state.pending];
    for (const click of clicks) {
      const [c, r, depth] = pixelOf(plane, voxelOfPoint(click.point_mm));
      if (Math.abs(depth - state.index[plane]) > 0.5) continue;
      context.fillStyle = click.positive ? "#33ff66" : "#ff4455";
      context.globalAlpha = click.sent ? 0.55 : 1;
      context.beginPath();
      context.arc((c + 0.5) * sx, (r + 0.5) * sy, 5, 0, 2 * Math.PI);
      context.fill();
      context.globalAlpha = 1;
    }
  }

  function onStageClick(plane, event) {
    const stage = event.currentTarget;
    const info = state.view.planes[plane];
    const bounds = stage.getBoundingClientRect();
    // Pixel centres lie at half-integers of the PNG: pixel c covers [c, c + 1).
    const column = ((event.clientX - bounds.left) / bounds.width) * info.width - 0.5;
    const row = ((event.clientY - bounds.top) / bounds.height) * info.height - 0.5;
    const voxel = voxelOf(plane, state.index[plane], column, row);
    if (state.mode === "navigate") {
      const rounded = voxel.map(Math.round);
      PLANES.filter((other) => other !== plane).forEach((other) => {
        const axis = { axial: 2, coronal: 1, sagittal: 0 }[other];
        setIndex(other, rounded[axis]);
      });
      return;
    }
    state.pending.push({ point_mm: pointMm(voxel), positive: state.mode === "positive" });
    showPending();
    PLANES.forEach(drawMarks);
  }

  // --- refinement ----------------------------------------------------------------------------

  function showPending() {
    const list = document.getElementById("pending-clicks");
    list.replaceChildren(
      ...state.pending.map((click) => {
        const item = document.createElement("li");
        item.className = click.positive ? "positive" : "negative";
        item.textContent = `${click.positive ? "+" : "−"} (${click.point_mm.map((v) => v.toFixed(1)).join(", ")}) mm`;
        return item;
      }),
    );
    document.getElementById("refine-send").disabled = state.busy || state.pending.length === 0;
    document.getElementById("clicks-clear").disabled = state.busy || state.pending.length === 0;
  }

  async function sendClicks() {
    if (state.pending.length === 0 || state.busy) return;
    state.busy = true;
    showPending();
    say("refine-message", "Sending…");
    try {
      const response = await fetch(`${api}/refine`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
        body: JSON.stringify({ clicks: state.pending }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || response.statusText);
      say("refinements", String(body.refinements));
      say("refine-message", "Refining…");
      const finished = await waitForJob();
      if (finished.state !== "succeeded") throw new Error(finished.error ? finished.error.message : finished.state);
      state.pending = [];
      await reloadView();
      say("refine-message", `Refinement ${finished.refinements} done.`);
    } catch (error) {
      say("refine-message", `Not refined: ${error.message}`);
    } finally {
      state.busy = false;
      showPending();
    }
  }

  // Every poll is a row of the audit trail: ask often at first, then less and less.
  async function waitForJob() {
    for (let wait = POLL_MS; ; wait = Math.min(wait * 1.5, MAX_POLL_MS)) {
      const job = await getJson(api);
      showJob(job);
      if (job.state === "succeeded" || job.state === "failed") return job;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  function showJob(job) {
    const badge = document.getElementById("job-state");
    badge.textContent = job.state;
    badge.className = `badge ${job.state}`;
    root.dataset.state = job.state;
    say("job-stage", job.stage ? `${job.stage} ${job.progress} %` : "");
    say("refinements", String(job.refinements));
    document.querySelectorAll("a.download").forEach((link) => {
      link.hidden = !(link.dataset.result in job.links.results);
    });
  }

  async function reloadView() {
    state.view = await getJson(`${api}/view`);
    root.dataset.version = state.view.version;
    showLayerControls();
    await renderAll();
    await showReport();
  }

  // What the job has now: a page opened while it was running gets its lesion later.
  function showLayerControls() {
    document.getElementById("toggle-lesion").disabled = !state.view.layers.lesion;
    document.getElementById("toggle-isodose").disabled = !state.view.layers.isodose;
    document.getElementById("qa-mode").disabled = !state.view.layers.planning;
    document.getElementById("refine-panel").hidden = !state.view.layers.lesion;
  }

  // A job still running when the page opened: show what it has, and the rest once it is done.
  async function followUnfinishedJob() {
    if (state.view.state === "succeeded" || state.view.state === "failed") return;
    const job = await waitForJob();
    if (job.state === "succeeded") await reloadView();
    else say("viewer-message", `The job ${job.state}.`);
  }

  // --- report --------------------------------------------------------------------------------

  function fixed(value, digits, unit) {
    return value === null || value === undefined ? "–" : `${Number(value).toFixed(digits)}${unit ? ` ${unit}` : ""}`;
  }

  async function showReport() {
    let report;
    try {
      report = await getJson(`${api}/results/report`);
    } catch (error) {
      return; // no report yet (the job has not succeeded)
    }
    const lesion = report.lesion || {};
    const dose = report.lesion_dose || {};
    const prompt = report.prompt || {};
    const registration = report.registration || {};
    const qa = registration.qa || {};
    const v = dose.v_percent || {};
    const rows = [
      ["lesion_volume_cc", "Lesion volume", fixed(lesion.volume_cc, 2, "cc")],
      ["lesion_components", "Components", lesion.components ?? "–"],
      ["lesion_dmean_gy", "Lesion Dmean", fixed(dose.dmean_gy, 1, "Gy")],
      ["lesion_dmax_gy", "Lesion Dmax", fixed(dose.dmax_gy, 1, "Gy")],
      ["lesion_d98_gy", "Lesion D98", fixed(dose.d98_gy, 1, "Gy")],
      ["lesion_d2cc_gy", "Lesion D2cc", fixed(dose.d2cc_gy, 1, "Gy")],
      ["lesion_v_gy", "Lesion V50 / V60 / V70", ["V50Gy", "V60Gy", "V70Gy"].map((k) => fixed(v[k], 0, "%")).join(" / ")],
      ["plan_dmax_gy", "Plan Dmax on follow-up", fixed(prompt.dmax_gy, 1, "Gy")],
      ["high_dose", "High-dose region (τ)", `${fixed(prompt.high_dose_roi_volume_cc, 1, "cc")} ≥ ${fixed(prompt.threshold_gy, 1, "Gy")} (τ ${prompt.tau})`],
      ["registration", "Registration", `${registration.method || "–"}${registration.needs_review ? " — needs review" : ""}`],
      ["registration_metric", "Metric before → after", `${fixed(qa.metric_before, 3)} → ${fixed(qa.metric_after, 3)}`],
      ["body_overlap", "Body overlap before → after", `${fixed(qa.body_overlap_before, 3)} → ${fixed(qa.body_overlap_after, 3)}`],
      ["rigid", "Rotation / translation", `${fixed(qa.rotation_degrees, 1, "°")} / ${fixed(qa.translation_mm, 1, "mm")}`],
      ["model", "Model", (report.model || {}).model_id || "–"],
      ["notice", "Status", report.notice || ""],
    ];
    const body = document.querySelector("#report tbody");
    body.replaceChildren(
      ...rows.map(([field, label, value]) => {
        const row = document.createElement("tr");
        row.dataset.field = field;
        const head = document.createElement("th");
        head.textContent = label;
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(head, cell);
        return row;
      }),
    );
    for (const flag of registration.flags || []) {
      const row = document.createElement("tr");
      row.className = "flag";
      row.innerHTML = "<th>Registration flag</th><td></td>";
      row.querySelector("td").textContent = flag;
      body.appendChild(row);
    }
  }

  // --- start ---------------------------------------------------------------------------------

  function setUpToolbar() {
    const presets = document.getElementById("window-preset");
    presets.replaceChildren(
      ...state.view.windows.map((w) => {
        const option = document.createElement("option");
        option.value = w.id;
        option.textContent = `${w.label} (L ${Math.round(w.level)} / W ${Math.round(w.width)})`;
        return option;
      }),
    );
    presets.value = state.window;
    presets.addEventListener("change", () => {
      state.window = presets.value;
      renderAll();
    });
    const toggle = (id, key) => {
      const box = document.getElementById(id);
      box.addEventListener("change", () => {
        state[key] = box.checked;
        renderAll();
      });
    };
    toggle("toggle-lesion", "lesion");
    toggle("toggle-isodose", "isodose");
    const qa = document.getElementById("qa-mode");
    qa.addEventListener("change", () => {
      state.qa = qa.value;
      renderAll();
    });
    document.querySelectorAll('input[name="click-mode"]').forEach((radio) => {
      radio.addEventListener("change", () => {
        state.mode = radio.value;
        root.dataset.clickMode = radio.value;
      });
    });
    document.getElementById("refine-send").addEventListener("click", sendClicks);
    document.getElementById("clicks-clear").addEventListener("click", () => {
      state.pending = [];
      showPending();
      PLANES.forEach(drawMarks);
    });
    const legend = document.getElementById("isodose-legend");
    legend.replaceChildren(
      ...state.view.isodose.map((level) => {
        const item = document.createElement("span");
        item.className = "iso";
        item.style.borderColor = level.colour;
        item.textContent = `${level.percent} % (${level.gy.toFixed(1)} Gy)`;
        return item;
      }),
    );
    document.getElementById("toolbar").hidden = false;
    showLayerControls();
  }

  async function start() {
    try {
      state.view = await getJson(`${api}/view`);
    } catch (error) {
      if (error.code !== "view-not-ready") {
        say("viewer-message", `The images cannot be shown: ${error.message}`);
        return;
      }
      const job = await waitForJob();
      if (job.state !== "succeeded") {
        say("viewer-message", `The job ${job.state}.`);
        return;
      }
      state.view = await getJson(`${api}/view`);
    }
    say("viewer-message", "");
    root.dataset.version = state.view.version;
    state.window = state.view.default_window;
    for (const plane of PLANES) state.index[plane] = state.view.planes[plane].start;
    setUpToolbar();
    PLANES.forEach(buildPanel);
    await renderAll();
    root.dataset.ready = "1";
    showPending();
    await showReport();
    await followUnfinishedJob();
  }

  start();
})();
