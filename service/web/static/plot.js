// The accuracy/compression plot of a job's trials (SVG), with the Pareto front and the chosen trial.

import { $, fmtPct, fmtRatio, h, svg } from "./dom.js";

// The Pareto front: the result's once finished, else computed from the trials so far.
function paretoNumbers(jobPage) {
  if (jobPage.result) return new Set(jobPage.result.pareto_front.map((p) => p.trial));
  const points = plotPoints(jobPage);
  const front = points.filter(
    (r) =>
      !points.some(
        (o) =>
          o.accuracy >= r.accuracy && o.compression >= r.compression &&
          (o.accuracy > r.accuracy || o.compression > r.compression),
      ),
  );
  return new Set(front.map((r) => r.number));
}

const plotPoints = (jobPage) =>
  jobPage.trials.filter(
    (t) => t.state === "COMPLETE" && typeof t.accuracy === "number" && typeof t.compression === "number",
  );

function ticks(lo, hi, count) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

export function renderPlot(jobPage) {
  const box = $("plot");
  box.replaceChildren();
  const points = plotPoints(jobPage);
  if (!points.length) {
    box.append(h("p", { class: "muted", text: "No completed trial yet." }));
    return;
  }
  const W = 720, H = 380, L = 60, R = 20, T = 16, B = 44;
  const baseline = jobPage.job ? jobPage.job.progress.baseline_accuracy : null;
  const tolerance = jobPage.job ? jobPage.job.spec.max_accuracy_drop ?? 1 : null;
  const xs = points.map((p) => p.compression);
  const ys = points.map((p) => 100 * p.accuracy);
  if (baseline !== null) ys.push(100 * baseline, 100 * baseline - tolerance);
  let [x0, x1] = [Math.min(1, ...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const padX = (x1 - x0 || 1) * 0.06;
  const padY = (y1 - y0 || 1) * 0.08;
  x0 -= padX; x1 += padX; y0 -= padY; y1 += padY;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const plot = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", id: "pareto-plot",
    "aria-label": "accuracy against compression of every completed trial" });
  const axis = svg("g", { class: "axis" });
  for (const v of ticks(x0, x1, 8)) {
    axis.append(svg("line", { class: "grid-line", x1: sx(v), x2: sx(v), y1: T, y2: H - B }));
    axis.append(svg("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle", text: v + "×" }));
  }
  for (const v of ticks(y0, y1, 6)) {
    axis.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
    axis.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", text: v + "%" }));
  }
  axis.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
  axis.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B }));
  axis.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle",
    text: "compression (original / compressed " + ((jobPage.job && jobPage.job.spec.objective) || "params") + ")" }));
  axis.append(svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
    transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", text: "validation accuracy" }));
  plot.append(axis);
  if (baseline !== null) {
    plot.append(svg("line", { class: "line-baseline", x1: L, x2: W - R, y1: sy(100 * baseline), y2: sy(100 * baseline) }));
    const tol = 100 * baseline - tolerance;
    plot.append(svg("line", { class: "line-tolerance", x1: L, x2: W - R, y1: sy(tol), y2: sy(tol) }));
  }
  const front = paretoNumbers(jobPage);
  const frontPts = points.filter((p) => front.has(p.number)).sort((a, b) => a.compression - b.compression);
  if (frontPts.length > 1) {
    plot.append(svg("polyline", { class: "front-line",
      points: frontPts.map((p) => sx(p.compression) + "," + sy(100 * p.accuracy)).join(" ") }));
  }
  for (const p of points) {
    const onFront = front.has(p.number);
    plot.append(
      svg("circle", { class: onFront ? "pt pt-front" : "pt pt-complete", "data-trial": p.number,
        cx: sx(p.compression), cy: sy(100 * p.accuracy), r: onFront ? 5.5 : 4.5 },
        svg("title", { text: "trial " + p.number + ": " + fmtPct(p.accuracy) + " at " + fmtRatio(p.compression) })),
    );
  }
  const chosen = jobPage.result ? jobPage.result.chosen_trial : null;
  const chosenPt = points.find((p) => p.number === chosen);
  if (chosenPt) {
    plot.append(svg("circle", { class: "pt-chosen", id: "chosen-point", "data-trial": chosen,
      cx: sx(chosenPt.compression), cy: sy(100 * chosenPt.accuracy), r: 10 },
      svg("title", { text: "chosen: trial " + chosen })));
  }
  box.append(plot);
}
