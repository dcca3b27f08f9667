// Line charts drawn on <canvas>: time on x, one series on y, no library.

import { clock, el } from "./dom.js";

const HEIGHT = 150;           // CSS pixels
const PAD = { left: 64, right: 12, top: 10, bottom: 22 };

/** A chart: a titled canvas; update(points) redraws it. */
export class Chart {
  /**
   * title: shown above; value(point): the y value or null; format(y): axis text;
   * floor: the least top of the y axis (e.g. 10 for a percentage); binary: bytes.
   */
  constructor(title, value, format, floor = 0, binary = false) {
    this.value = value;
    this.binary = binary;     // bytes: round the axis in powers of 1024
    this.format = format;
    this.floor = floor;
    this.series = [];
    this.latest = el("span", { class: "chart-latest" });
    this.canvas = el("canvas", { class: "chart-canvas", height: HEIGHT });
    this.element = el("figure", { class: "chart" },
      el("figcaption", {}, el("span", {}, title), this.latest), this.canvas);
    this.resized = () => this.draw();
    window.addEventListener("resize", this.resized);
  }

  /** Show points ({timestamp|time, ...}); any order, null values leave a gap. */
  update(points) {
    this.series = (points || [])
      .map((p) => ({ t: p.timestamp ?? p.time, v: this.value(p), step: p.resolution_seconds || 0 }))
      .filter((p) => Number.isFinite(p.t))
      .sort((a, b) => a.t - b.t);
    const last = [...this.series].reverse().find((p) => Number.isFinite(p.v));
    this.latest.textContent = last ? this.format(last.v) : "—";
    this.draw();
  }

  /** Draw the series at the canvas's current width. */
  draw() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    if (!width) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(HEIGHT * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, HEIGHT);
    const style = getComputedStyle(canvas);
    const colors = {
      line: style.getPropertyValue("--chart-line").trim() || "#2563eb",
      fill: style.getPropertyValue("--chart-fill").trim() || "rgba(37,99,235,0.12)",
      grid: style.getPropertyValue("--chart-grid").trim() || "#e5e7eb",
      text: style.getPropertyValue("--chart-text").trim() || "#6b7280",
    };
    g.font = "11px system-ui, sans-serif";
    const points = this.series.filter((p) => Number.isFinite(p.v));
    if (points.length === 0) {
      g.fillStyle = colors.text;
      g.fillText("no data yet", width / 2 - 28, HEIGHT / 2);
      return;
    }
    const box = { x0: PAD.left, x1: width - PAD.right, y0: PAD.top, y1: HEIGHT - PAD.bottom };
    const scale = this.scale(points);
    this.axes(g, box, scale, colors);
    this.line(g, box, scale, colors);
  }

  scale(points) {
    let t0 = points[0].t;
    let t1 = points[points.length - 1].t;
    if (t1 - t0 < 60000) t0 = t1 - 60000;                 // at least a minute wide
    const top = niceTop(Math.max(this.floor, ...points.map((p) => p.v)), this.binary);
    return { t0, t1: Math.max(t1, t0 + 1), top };
  }

  axes(g, box, scale, colors) {
    g.strokeStyle = colors.grid;
    g.fillStyle = colors.text;
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i += 1) {
      const y = Math.round(box.y1 - ((box.y1 - box.y0) * i) / 4) + 0.5;
      g.beginPath();
      g.moveTo(box.x0, y);
      g.lineTo(box.x1, y);
      g.stroke();
      const text = this.format((scale.top * i) / 4);
      g.fillText(text, box.x0 - 6 - g.measureText(text).width, y + 4);
    }
    const seconds = (scale.t1 - scale.t0) > 20 * 60000 ? false : true;
    for (const f of [0, 0.5, 1]) {
      const text = clock(scale.t0 + (scale.t1 - scale.t0) * f, seconds);
      const x = box.x0 + (box.x1 - box.x0) * f - g.measureText(text).width * f;
      g.fillText(text, x, HEIGHT - 6);
    }
  }

  line(g, box, scale, colors) {
    const x = (t) => box.x0 + ((box.x1 - box.x0) * (t - scale.t0)) / (scale.t1 - scale.t0);
    const y = (v) => box.y1 - ((box.y1 - box.y0) * v) / scale.top;
    const runs = splitAtGaps(this.series);
    for (const run of runs) {
      g.beginPath();
      run.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.v)) : g.moveTo(x(p.t), y(p.v))));
      g.strokeStyle = colors.line;
      g.lineWidth = 1.5;
      g.stroke();
      g.lineTo(x(run[run.length - 1].t), box.y1);
      g.lineTo(x(run[0].t), box.y1);
      g.closePath();
      g.fillStyle = colors.fill;
      g.fill();
    }
  }

  /** Stop listening to window resizes. */
  close() {
    window.removeEventListener("resize", this.resized);
  }
}

/** Runs of consecutive points, cut where a value is missing or a sample gap is
 * more than three times the usual interval (the agent was not running). */
function splitAtGaps(series) {
  const steps = [];
  for (let i = 1; i < series.length; i += 1) steps.push(series[i].t - series[i - 1].t);
  steps.sort((a, b) => a - b);
  const usual = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
  const runs = [];
  let run = [];
  series.forEach((p, i) => {
    const gap = i > 0 && p.t - series[i - 1].t > Math.max(3 * usual, 3000 * (p.step || 0), 5000);
    if (!Number.isFinite(p.v) || gap) {
      if (run.length) runs.push(run);
      run = [];
    }
    if (Number.isFinite(p.v)) run.push(p);
  });
  if (run.length) runs.push(run);
  return runs;
}

/** A round top for the axis at or above value, whose quarters are round too:
 * 1, 2, 4, 8 or 10 times a power of ten (bytes: of ten within a power of 1024). */
function niceTop(value, binary) {
  if (!(value > 0)) return 1;
  const unit = binary ? 1024 ** Math.max(0, Math.floor(Math.log(value) / Math.log(1024))) : 1;
  const scaled = value / unit;
  const power = 10 ** Math.floor(Math.log10(scaled));
  for (const step of [1, 2, 4, 8, 10]) {
    if (scaled <= step * power) return step * power * unit;
  }
  return 10 * power * unit;
}
