// @ts-check
// Small charts drawn by hand on <canvas>: candidates per round, α over time, expert usage.
// Every draw sizes the canvas to its box and the device's pixel ratio, so lines stay crisp.

/** Distinct hues that read on light and dark backgrounds; "none" is grey. */
const PALETTE = ["#e07a1f", "#2a9d8f", "#9b59b6", "#d62d6b", "#3b82f6", "#b08900", "#16a34a", "#0ea5e9", "#ef4444", "#64748b"];
const NONE = "#8a919c";

/** Stable colours per expert name, in order of first sight. */
export class Palette {
  constructor() {
    /** @type {Map<string, string>} */
    this.colors = new Map();
  }

  /** @param {string | null} name */
  colorOf(name) {
    if (name === null || name === "none") return NONE;
    let color = this.colors.get(name);
    if (!color) {
      color = PALETTE[this.colors.size % PALETTE.length];
      this.colors.set(name, color);
    }
    return color;
  }
}

/** @param {string} name */
function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/**
 * @param {HTMLCanvasElement} canvas
 * @param {number} height CSS pixels
 */
function prepare(canvas, height) {
  const width = Math.max(120, canvas.clientWidth || canvas.width);
  const dpr = window.devicePixelRatio || 1;
  canvas.style.height = `${height}px`;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  return { ctx, width, height };
}

/**
 * Drafted (outline) and accepted (filled) candidates of the most recent rounds that fit.
 * @param {HTMLCanvasElement} canvas
 * @param {Array<{ drafted: number, accepted: number }>} rounds
 */
export function drawRounds(canvas, rounds) {
  const { ctx, width, height } = prepare(canvas, 110);
  const left = 22;
  const bottom = height - 14;
  const top = 8;
  const slot = 7;
  const shown = rounds.slice(-Math.floor((width - left - 4) / slot));
  const max = Math.max(4, ...shown.map((r) => r.drafted));
  const y = (/** @type {number} */ v) => bottom - ((bottom - top) * v) / max;
  ctx.strokeStyle = cssVar("--border");
  ctx.fillStyle = cssVar("--muted");
  ctx.lineWidth = 1;
  for (const v of [0, Math.round(max / 2), max]) {
    ctx.beginPath();
    ctx.moveTo(left, y(v) + 0.5);
    ctx.lineTo(width - 2, y(v) + 0.5);
    ctx.stroke();
    ctx.fillText(String(v), 4, y(v));
  }
  const fill = cssVar("--accepted-edge");
  const outline = cssVar("--boundary");
  shown.forEach((r, i) => {
    const x = left + 2 + i * slot;
    if (r.accepted > 0) {
      ctx.fillStyle = fill;
      ctx.fillRect(x, y(r.accepted), slot - 2, bottom - y(r.accepted));
    }
    if (r.drafted > 0) {
      ctx.strokeStyle = outline;
      ctx.strokeRect(x + 0.5, y(r.drafted) + 0.5, slot - 3, bottom - y(r.drafted));
    }
  });
  ctx.fillStyle = cssVar("--muted");
  ctx.fillText(`${rounds.length} rounds${shown.length < rounds.length ? ` (last ${shown.length})` : ""}`, left, height - 6);
}

/**
 * α at every token as a line, each point coloured by its expert.
 * @param {HTMLCanvasElement} canvas
 * @param {Array<{ expert: string | null, alpha: number }>} points
 * @param {Palette} palette
 */
export function drawAlpha(canvas, points, palette) {
  const { ctx, width, height } = prepare(canvas, 110);
  const left = 26;
  const bottom = height - 14;
  const top = 8;
  const max = Math.max(2, ...points.map((p) => p.alpha));
  const step = points.length > 1 ? Math.min(12, (width - left - 6) / (points.length - 1)) : 0;
  const first = step > 0 ? Math.max(0, points.length - Math.floor((width - left - 6) / step) - 1) : 0;
  const shown = points.slice(first);
  const x = (/** @type {number} */ i) => left + 3 + i * step;
  const y = (/** @type {number} */ v) => bottom - ((bottom - top) * v) / max;
  ctx.strokeStyle = cssVar("--border");
  ctx.fillStyle = cssVar("--muted");
  for (let v = 0; v <= max; v += max > 4 ? 2 : 1) {
    ctx.beginPath();
    ctx.moveTo(left, y(v) + 0.5);
    ctx.lineTo(width - 2, y(v) + 0.5);
    ctx.stroke();
    ctx.fillText(v.toFixed(0), 6, y(v));
  }
  ctx.strokeStyle = cssVar("--muted");
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  shown.forEach((p, i) => (i === 0 ? ctx.moveTo(x(i), y(p.alpha)) : ctx.lineTo(x(i), y(p.alpha))));
  ctx.stroke();
  shown.forEach((p, i) => {
    ctx.fillStyle = palette.colorOf(p.expert);
    ctx.beginPath();
    ctx.arc(x(i), y(p.alpha), 2.6, 0, 2 * Math.PI);
    ctx.fill();
  });
  ctx.fillStyle = cssVar("--muted");
  ctx.fillText(`${points.length} tokens`, left, height - 6);
}

/**
 * Horizontal bars: how much each expert was used.
 * @param {HTMLCanvasElement} canvas
 * @param {Map<string, number>} usage
 * @param {Palette} palette
 * @param {(value: number, total: number) => string} label
 */
export function drawUsage(canvas, usage, palette, label) {
  const entries = [...usage.entries()].sort((a, b) => b[1] - a[1]);
  const row = 18;
  const { ctx, width } = prepare(canvas, Math.max(40, entries.length * row + 8));
  const total = entries.reduce((a, [, v]) => a + v, 0);
  const max = Math.max(1e-9, ...entries.map(([, v]) => v));
  const nameWidth = Math.min(110, Math.max(40, ...entries.map(([name]) => ctx.measureText(name).width + 8)));
  const valueWidth = 64;
  const barWidth = width - nameWidth - valueWidth - 8;
  entries.forEach(([name, value], i) => {
    const y = 4 + i * row;
    ctx.fillStyle = cssVar("--text");
    ctx.fillText(name, 4, y + row / 2 - 1, nameWidth - 6);
    ctx.fillStyle = palette.colorOf(name);
    ctx.fillRect(nameWidth, y + 3, Math.max(1, (barWidth * value) / max), row - 7);
    ctx.fillStyle = cssVar("--muted");
    ctx.fillText(label(value, total), width - valueWidth, y + row / 2 - 1);
  });
}
