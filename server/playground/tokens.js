// @ts-check
// The token view: one span per generated token, coloured by how it came to be, with a tooltip
// (on hover, or on the keyboard-selected token) that explains it.
import { Palette } from "./charts.js";

/** @typedef {import("./transcript.js").Transcript} Transcript */
/** @typedef {import("./transcript.js").TokenRecord} TokenRecord */

const ORIGIN_TEXT = {
  accepted: "accepted draft token: the target kept what the draft proposed",
  forced: "forced: the grammar allowed only this token here; proposed without the draft, so always kept",
  recovered: "recovered: the target rejected the draft's candidate here and drew this token instead",
  bonus: "bonus: every candidate of the round was accepted; the target added this one",
  undrafted: "target only: the draft proposed nothing this round",
};

/** @param {number} p */
const pct = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
/** @param {number} lp */
const prob = (lp) => (lp <= -9999 ? "0" : pct(Math.exp(lp)));
/** Shows spaces and line breaks in token text. @param {string} text */
export const visible = (text) => text.replaceAll("\n", "⏎").replace(/^ | $/g, "␣") || "∅";

/**
 * @param {string} tag
 * @param {string | null} [className]
 * @param {string | null} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export class TokenView {
  /**
   * @param {HTMLElement} container the focusable token area
   * @param {HTMLElement} tooltip
   * @param {HTMLElement} frame the positioned ancestor of the tooltip
   * @param {Palette} palette
   */
  constructor(container, tooltip, frame, palette) {
    this.container = container;
    this.tooltip = tooltip;
    this.frame = frame;
    this.palette = palette;
    /** @type {HTMLSpanElement[]} */
    this.spans = [];
    /** @type {Transcript | null} */
    this.transcript = null;
    /** Keyboard selection (index), or -1. */
    this.selected = -1;
    /** Token under the mouse, or -1. */
    this.hovered = -1;

    container.addEventListener("keydown", (e) => this.onKey(e));
    container.addEventListener("focus", () => {
      if (this.selected < 0 && this.spans.length > 0) this.select(0);
      else this.showTip();
    });
    container.addEventListener("blur", () => {
      this.hovered = -1;
      this.showTip();
    });
    container.addEventListener("mouseover", (e) => {
      const span = /** @type {HTMLElement} */ (e.target).closest?.(".tok");
      if (!span || !(span instanceof HTMLElement) || span.dataset.index === undefined) return;
      this.hovered = Number(span.dataset.index);
      this.showTip();
    });
    container.addEventListener("mouseleave", () => {
      this.hovered = -1;
      this.showTip();
    });
  }

  /** @param {Transcript} transcript */
  reset(transcript) {
    this.transcript = transcript;
    this.container.replaceChildren();
    this.container.removeAttribute("aria-activedescendant");
    this.spans = [];
    this.selected = -1;
    this.hovered = -1;
    this.showTip();
  }

  /** Draws what changed since the last call. */
  render() {
    const t = this.transcript;
    if (!t) return;
    const from = Math.min(t.dirtyFrom, this.spans.length);
    t.dirtyFrom = Infinity;
    for (let i = from; i < t.tokens.length; i++) {
      let span = this.spans[i];
      if (!span) {
        span = /** @type {HTMLSpanElement} */ (el("span"));
        span.id = `tok-${i}`;
        span.dataset.index = String(i);
        this.spans.push(span);
        this.container.append(span);
      }
      this.paint(span, t.tokens[i], i);
    }
    if (t.done) this.markCut();
    if (this.selected >= 0 || this.hovered >= 0) this.showTip();
  }

  /**
   * @param {HTMLSpanElement} span
   * @param {TokenRecord} token
   * @param {number} i
   */
  paint(span, token, i) {
    const classes = ["tok"];
    const s = token.speculative;
    if (s) {
      classes.push(`origin-${s.origin}`);
      if (s.drafted === 0) classes.push("undrafted");
      const previous = i > 0 ? this.transcript?.tokens[i - 1].speculative : undefined;
      if (!previous || previous.round !== s.round) classes.push("round-start");
    } else classes.push("origin-plain");
    const expert = token.fusion ? token.fusion.expert : token.routing ? (token.routing.experts[0]?.expert ?? null) : undefined;
    if (expert) {
      classes.push("has-expert");
      span.style.setProperty("--expert", this.palette.colorOf(expert));
    }
    if (token.text === null) classes.push(this.transcript?.done ? "unreleased" : "pending");
    if (i === this.selected) classes.push("selected");
    span.className = classes.join(" ");
    span.dataset.origin = s ? s.origin : "plain";
    span.textContent = token.text ?? (this.transcript?.done ? "⟨end⟩" : "…");
  }

  /**
   * The deltas' text is the answer; a stop sequence cuts it inside a token's text, whose logprob
   * entry still carries all of it: strike out what the answer does not contain.
   */
  markCut() {
    const t = /** @type {Transcript} */ (this.transcript);
    const joined = t.tokens.map((x) => x.text ?? "").join("");
    if (joined.length <= t.content.length || !joined.startsWith(t.content)) return;
    let at = 0;
    for (const [i, token] of t.tokens.entries()) {
      if (token.text === null) continue;
      const end = at + token.text.length;
      if (end > t.content.length) {
        const keep = Math.max(0, t.content.length - at);
        this.spans[i].replaceChildren(token.text.slice(0, keep), el("span", "cut", token.text.slice(keep)));
        this.spans[i].title = "cut by a stop sequence";
      }
      at = end;
    }
  }

  /** @param {KeyboardEvent} e */
  onKey(e) {
    const n = this.spans.length;
    if (n === 0) return;
    const moves = {
      ArrowRight: this.selected + 1,
      ArrowDown: this.selected + 10,
      ArrowLeft: this.selected - 1,
      ArrowUp: this.selected - 10,
      Home: 0,
      End: n - 1,
    };
    if (e.key in moves) {
      e.preventDefault();
      this.select(Math.max(0, Math.min(n - 1, moves[/** @type {keyof typeof moves} */ (e.key)])));
    } else if (e.key === "Escape" && this.selected >= 0) {
      e.stopPropagation();
      this.select(-1);
    }
  }

  /** @param {number} i */
  select(i) {
    this.spans[this.selected]?.classList.remove("selected");
    this.selected = i;
    const span = this.spans[i];
    if (span) {
      span.classList.add("selected");
      span.scrollIntoView({ block: "nearest" });
      this.container.setAttribute("aria-activedescendant", span.id);
    } else this.container.removeAttribute("aria-activedescendant");
    this.showTip();
  }

  /** The tooltip follows the mouse's token, else the keyboard's. */
  showTip() {
    const focused = document.activeElement === this.container;
    const i = this.hovered >= 0 ? this.hovered : focused ? this.selected : -1;
    const token = this.transcript?.tokens[i];
    const span = this.spans[i];
    if (!token || !span) {
      this.tooltip.hidden = true;
      return;
    }
    this.tooltip.replaceChildren(...describe(token, i, this.palette, this.transcript?.done ?? false));
    this.tooltip.hidden = false;
    const frame = this.frame.getBoundingClientRect();
    const box = span.getBoundingClientRect();
    const tip = this.tooltip.getBoundingClientRect();
    const left = Math.max(4, Math.min(box.left - frame.left, frame.width - tip.width - 4));
    const below = box.bottom - frame.top + 6;
    const top = below + tip.height > frame.height && box.top - frame.top > tip.height + 6 ? box.top - frame.top - tip.height - 6 : below;
    this.tooltip.style.left = `${left}px`;
    this.tooltip.style.top = `${top}px`;
  }
}

/**
 * The tooltip's content for one token.
 * @param {TokenRecord} token
 * @param {number} i
 * @param {Palette} palette
 * @param {boolean} done
 * @returns {Node[]}
 */
export function describe(token, i, palette, done) {
  const nodes = [];
  nodes.push(el("h3", null, token.text === null ? (done ? "⟨end⟩" : "…") : visible(token.text)));
  const dl = el("dl");
  /**
   * @param {string} term
   * @param {string | Node} value
   */
  const row = (term, value) => {
    dl.append(el("dt", null, term));
    const dd = el("dd");
    dd.append(value);
    dl.append(dd);
  };
  row("token", `#${i + 1}`);
  if (token.text === null && done) row("text", "none: end of generation, or completed a stop sequence");
  if (token.logprob !== null) row("logprob", `${token.logprob.toFixed(3)} (p ${prob(token.logprob)})`);
  const s = token.speculative;
  if (s) {
    row("origin", s.drafted === 0 ? ORIGIN_TEXT.undrafted : ORIGIN_TEXT[s.origin]);
    row("round", `${s.round + 1}: ${s.drafted} drafted`);
    if (s.draft_probability !== undefined) row("draft prob.", pct(s.draft_probability));
    if (s.acceptance_probability !== undefined) row("acceptance", `${pct(s.acceptance_probability)} = min(1, p/q)`);
    if (s.predicted_acceptance !== undefined) row("predicted P̂", pct(s.predicted_acceptance));
    const r = s.rejected;
    if (r) {
      row("rejected", `“${visible(r.text)}” (draft ${pct(r.draft_probability)}, acceptance ${pct(r.acceptance_probability)}${r.predicted_acceptance !== undefined ? `, P̂ ${pct(r.predicted_acceptance)}` : ""})`);
    }
  }
  if (token.fusion) {
    row("fusion", swatch(token.fusion.expert ?? "none", palette, `α = ${token.fusion.alpha.toFixed(2)}`));
  }
  if (token.routing) {
    /** @param {Array<{ expert: string, weight: number }>} weights */
    const weightsBox = (weights) => {
      const box = el("span");
      weights.forEach((e, j) => {
        if (j > 0) box.append(el("br"));
        box.append(swatch(e.expert, palette, pct(e.weight)));
      });
      return box;
    };
    row("experts", weightsBox(token.routing.experts));
    // Per module group (attn_q, ffn_down, output, …): the mean over that group's layers.
    for (const [group, weights] of Object.entries(token.routing.groups ?? {})) row(group, weightsBox(weights));
  } else if (token.routing === null) row("experts", "not reported for this token");
  nodes.push(dl);
  if (token.top.length > 0) {
    const alts = el("ul", "alts");
    for (const alt of token.top.filter((a) => a.logprob > -9999).slice(0, 5)) alts.append(el("li", null, `${prob(alt.logprob).padStart(5)}  ${visible(alt.text)}`));
    nodes.push(el("div", null, "most likely here:"), alts);
  }
  return nodes;
}

/**
 * @param {string} name
 * @param {Palette} palette
 * @param {string} suffix
 */
function swatch(name, palette, suffix) {
  const box = el("span");
  const mark = el("span", "swatch");
  mark.style.setProperty("--expert", palette.colorOf(name));
  box.append(mark, `${name} ${suffix}`);
  return box;
}
