/* modelpress dashboard: live job updates from the server-sent events, and the sweep charts.
   Everything works without this file except the live updates (reload instead) and the charts
   (the table of points below them holds the same data). */
"use strict";

(function () {
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const MAX_STREAMS = 4; // browsers allow 6 connections per host; leave room for the page itself
  const NICE_RATIOS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1];
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F"];

  function number(value, digits) {
    return value === null || value === undefined || !isFinite(value) ? "—" : Number(value).toPrecision(digits || 4);
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const minutes = Math.floor(seconds / 60);
    return minutes < 60 ? `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`
      : `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  }
  function set(root, field, text) {
    root.querySelectorAll(`[data-field="${field}"]`).forEach((el) => { el.textContent = text; });
  }

  /* one job's stream; onEnd gets the last record */
  function follow(id, onProgress, onEnd) {
    const source = new EventSource(`/ui/jobs/${encodeURIComponent(id)}/events`);
    source.addEventListener("progress", (event) => onProgress(JSON.parse(event.data)));
    source.addEventListener("end", (event) => { source.close(); onEnd(JSON.parse(event.data)); });
    return source;
  }

  async function fragment(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.redirected || !response.ok) { window.location.reload(); return null; }
    return response.text();
  }

  function showProgress(root, job) {
    const p = job.progress || {};
    const metrics = p.metrics || {};
    root.querySelectorAll('[data-field="status"]').forEach((el) => {
      el.textContent = job.status;
      el.className = el.className.replace(/\bs-\w+/, "s-" + job.status);
    });
    // a finished job's data-status changes only once its finished content is in place
    if (!TERMINAL.has(job.status)) root.dataset.status = job.status;
    const percent = Math.round(100 * (p.fraction || 0));
    set(root, "stage", root.tagName === "TR" ? `${p.stage || ""} · ${percent} %` : p.stage || "—");
    set(root, "percent", percent + " %");
    set(root, "epoch", p.epoch === null || p.epoch === undefined ? "—" : String(p.epoch));
    set(root, "loss", number(metrics.loss));
    set(root, "regularizer", number(metrics.regularizer));
    set(root, "eta", duration(p.eta_s));
    root.querySelectorAll('progress[data-field="fraction"]').forEach((el) => { el.value = p.fraction || 0; });
  }

  /* the jobs list: follow the unfinished rows, a few streams at a time */
  function liveList(table) {
    const waiting = [...table.querySelectorAll("tbody tr[data-job]")].filter((row) => !TERMINAL.has(row.dataset.status));
    let open = 0;
    function next() {
      while (open < MAX_STREAMS && waiting.length) {
        const row = waiting.shift();
        open += 1;
        follow(row.dataset.job, (job) => showProgress(row, job), async () => {
          const html = await fragment(`/ui/jobs/${encodeURIComponent(row.dataset.job)}/row`);
          if (html !== null) row.outerHTML = html;
          open -= 1;
          next();
        });
      }
    }
    next();
  }

  /* a job's page: live progress, then the finished page part swapped in without a reload */
  function liveJob(section) {
    if (TERMINAL.has(section.dataset.status)) return;
    const id = section.dataset.job;
    follow(id, (job) => showProgress(section, job), async () => {
      const html = await fragment(`/ui/jobs/${encodeURIComponent(id)}/live`);
      if (html === null) return;
      section.innerHTML = html;
      const status = section.querySelector('[data-field="status"]');
      if (status) section.dataset.status = status.textContent.trim();
      drawCurves();
    });
  }

  function describe(point, axis) {
    const rule = point.strength === null ? `target ${point.target}` : `strength ${point.strength} · target ${point.target}`;
    const name = axis === "macs_ratio" ? "MACs" : "params";
    return [`${point.method} · ${rule}`, `${name} ${point[axis].toFixed(3)} · accuracy ${(100 * point.accuracy).toFixed(2)} %`];
  }

  function chartData(curve, axis) {
    const methods = [...new Set(curve.points.map((p) => p.method))];
    const datasets = methods.map((method, i) => ({
      label: method, kind: "method", showLine: false, pointRadius: 4, pointHoverRadius: 7,
      backgroundColor: PALETTE[i % PALETTE.length], borderColor: PALETTE[i % PALETTE.length],
      data: curve.points.filter((p) => p.method === method).map((p) => ({ x: p[axis], y: p.accuracy, point: p })),
    }));
    const front = (axis === "macs_ratio" ? curve.pareto_macs : curve.pareto_params).slice().sort((a, b) => a[axis] - b[axis]);
    datasets.push({
      label: "Pareto front", kind: "front", showLine: true, borderColor: "#17202a", borderWidth: 1.5,
      borderDash: [6, 4], pointStyle: "rectRot", pointRadius: 7, pointHoverRadius: 9, pointBorderWidth: 1.5,
      backgroundColor: "rgba(0,0,0,0)", data: front.map((p) => ({ x: p[axis], y: p.accuracy, point: p })),
    });
    const lowest = Math.min(...curve.points.map((p) => p[axis]), 1);
    datasets.push({
      label: `original (${(100 * curve.baseline_accuracy).toFixed(1)} %)`, kind: "baseline", showLine: true,
      pointRadius: 0, pointHoverRadius: 0, borderColor: "#8a96a3", borderDash: [2, 3], borderWidth: 1,
      data: [{ x: lowest, y: curve.baseline_accuracy }, { x: 1, y: curve.baseline_accuracy }],
    });
    return { methods, datasets };
  }

  function chartOptions(curve, axis) {
    const xTitle = axis === "macs_ratio" ? "MACs after / before (log scale)" : "parameters after / before (log scale)";
    return {
      responsive: true, maintainAspectRatio: false, animation: false,
      interaction: { mode: "nearest", intersect: true },
      scales: {
        x: {
          type: "logarithmic", title: { display: true, text: xTitle },
          // a few round ratios rather than every 1-2-…-9 step of each decade
          afterBuildTicks: (scale) => {
            scale.ticks = NICE_RATIOS.filter((v) => v >= scale.min && v <= scale.max).map((value) => ({ value }));
          },
          ticks: { callback: (v) => String(v) },
        },
        y: { title: { display: true, text: curve.metric === "accuracy" ? "top-1 accuracy" : "top-1 agreement" },
             ticks: { callback: (v) => Math.round(100 * v) + " %" } },
      },
      plugins: {
        legend: { position: "bottom", labels: { usePointStyle: true, boxWidth: 7, boxHeight: 7, padding: 14 } },
        tooltip: {
          filter: (item) => item.dataset.kind !== "baseline",
          callbacks: { label: (item) => describe(item.raw.point, axis) },
        },
      },
    };
  }

  function drawCurves() {
    const source = document.getElementById("curve-data");
    if (!source || typeof window.Chart === "undefined") return;
    const curve = JSON.parse(source.textContent);
    document.querySelectorAll("canvas[data-axis]").forEach((canvas) => {
      if (window.Chart.getChart(canvas)) return;
      const axis = canvas.dataset.axis;
      const { methods, datasets } = chartData(curve, axis);
      new window.Chart(canvas, { type: "scatter", data: { datasets }, options: chartOptions(curve, axis) });
      canvas.dataset.series = methods.join(",");
      canvas.dataset.drawn = "true";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const table = document.getElementById("jobs");
    if (table) liveList(table);
    const section = document.getElementById("live");
    if (section) liveJob(section);
    drawCurves();
  });
})();
