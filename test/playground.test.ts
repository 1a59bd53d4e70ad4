// The playground page. Its HTTP shape needs no engine; the page itself runs in Debian's Chromium,
// driven by playwright-core, against a real flock serving forged models: a prompt streams an
// answer, every token becomes a span whose origin class is what the response extension says,
// the live panel agrees with the server's summary, and the console stays clean. Screenshots are
// kept under test/artifacts/. Without Chromium the browser tests are skipped, unless
// FLOCK_REQUIRE_BROWSER=1 (set by .ci/run once it installed the package).
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page, type Response as PageResponse } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Engine } from "../engine/engine.js";
import { readManifest } from "../forge/manifest.js";
import { createApp } from "../server/app.js";
import { notReady, type ServerContext } from "../server/context.js";
import { createLogger } from "../server/logger.js";
import { forgedPath, startTestServer, type TestServer } from "./helpers/server.js";

const CHROMIUM = [process.env.FLOCK_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p): p is string => !!p && existsSync(p));
const required = process.env.FLOCK_REQUIRE_BROWSER === "1";
const ARTIFACTS = join(import.meta.dirname, "artifacts");

function context(overrides: Partial<ServerContext> = {}): ServerContext {
  return { registry: notReady, health: () => ({ status: "loading" }), limits: { maxN: 8, maxTokens: null }, maxBodyBytes: 1 << 20, log: createLogger("silent"), ...overrides };
}

describe("the page over HTTP", () => {
  it("GET / is the page, its assets are served with their types, and nothing else moves", async () => {
    const app = createApp(context({ auth: { apiKeys: ["k"] } }));
    const page = await app.request("/");
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(page.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(page.headers.get("content-security-policy")).toContain("connect-src 'self'");
    const html = await page.text();
    // No CDN, no network: every script, style and icon is one of ours.
    const refs = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]);
    expect(refs.length).toBeGreaterThan(2);
    for (const ref of refs) {
      expect(ref).toMatch(/^playground\/[\w.-]+$/);
      const asset = await app.request(`/${ref}`);
      expect(asset.status, ref).toBe(200);
      expect(asset.headers.get("x-content-type-options")).toBe("nosniff");
    }
    expect((await app.request("/playground/app.js")).headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect((await app.request("/playground/playground.css")).headers.get("content-type")).toBe("text/css; charset=utf-8");

    const etag = page.headers.get("etag")!;
    expect((await app.request("/", { headers: { "if-none-match": etag } })).status).toBe(304);

    // Public page, guarded API; unknown files and the page's tsconfig are plain 404s.
    expect((await app.request("/v1/models")).status).toBe(401);
    for (const path of ["/playground/tsconfig.json", "/playground/nothing.js", "/playground/../server.ts", "/index.html"]) {
      const res = await app.request(path);
      expect(res.status, path).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("unknown_url");
    }
    expect((await app.request("/health")).status).toBe(503); // loading, as before
  });

  it("is off with playground: false", async () => {
    const app = createApp(context({ playground: false }));
    expect((await app.request("/")).status).toBe(404);
    expect((await app.request("/playground/app.js")).status).toBe(404);
  });
});

describe("Chromium", () => {
  it.runIf(!CHROMIUM && required)("is installed (FLOCK_REQUIRE_BROWSER=1)", () => {
    expect(CHROMIUM, "chromium at /usr/bin/chromium (apt-get install chromium) or FLOCK_CHROMIUM").toBeDefined();
  });
  it.runIf(!CHROMIUM && !required)("is not installed: the browser tests are skipped (apt-get install chromium, or set FLOCK_CHROMIUM)", () => {});
});

interface SpeculativeToken {
  origin: "accepted" | "recovered" | "bonus";
  round: number;
  drafted: number;
}

/** The JSON events of an SSE body. */
function events(body: string): Array<Record<string, any>> {
  return body
    .split(/\n\n/)
    .map((e) => e.trim())
    .filter((e) => e.startsWith("data: ") && e !== "data: [DONE]")
    .map((e) => JSON.parse(e.slice(6)));
}

describe.runIf(CHROMIUM)("the page in Chromium", () => {
  let t: TestServer;
  let browser: Browser;
  const problems: string[] = [];
  /** Routed LoRA with per-token reports needs flock's native build (CI requires it). */
  let routedLora = process.env.FLOCK_REQUIRE_NATIVE === "1";

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const manifest = readManifest(inject("forgeDir"));
    const demo = (id: string, extra: object = {}) => ({ id, path: forgedPath(manifest.models["flock-demo"].file), parallel: 2, ...extra });
    t = await startTestServer({
      models: [
        demo("plain"),
        demo("spec", { speculative: { draft: forgedPath(manifest.models["flock-demo-draft"].file) } }),
        demo("fused", {
          fusion: {
            base: forgedPath(manifest.models["flock-weak"].file),
            experts: manifest.domains.map((d) => ({ name: d.name, lora: forgedPath(manifest.adapters[`flock-weak-${d.name}`].file) })),
          },
        }),
        {
          id: "routing",
          path: forgedPath(manifest.models["flock-routing-base"].file),
          parallel: 1,
          experts: {
            library: Object.values(manifest.adapters)
              .filter((a) => a.base === "flock-routing-base")
              .map((a) => ({ name: a.domain, lora: forgedPath(a.file), gates: forgedPath(a.gates!) })),
          },
        },
      ],
    });
    if (!routedLora) {
      const engine = await Engine.create({ gpu: "off", threads: 1 });
      routedLora = engine.capabilities.routedLora;
      await engine[Symbol.asyncDispose]();
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  });
  afterAll(async () => {
    await browser?.close();
    await t?.close();
  });

  async function open(url: string): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") problems.push(`${m.type()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    await page.goto(url);
    await page.locator("#model option").first().waitFor({ state: "attached" });
    return page;
  }

  /** Sends the form with Ctrl+Enter and returns the streamed response's events once the page shows the answer. */
  async function ask(page: Page, path: string): Promise<Array<Record<string, any>>> {
    const response: Promise<PageResponse> = page.waitForResponse((r) => r.url().endsWith(path));
    await page.locator("#prompt").press("Control+Enter");
    const res = await response;
    await page.locator("#tokens[data-state=done]").waitFor({ timeout: 30_000 });
    expect(res.status()).toBe(200);
    return events(await res.text());
  }

  it("streams a chat answer from a speculative model; every token's span carries the origin the extension reports", async () => {
    problems.length = 0;
    const page = await open(t.url);
    expect(await page.title()).toBe("flock playground");
    await page.selectOption("#model", "spec");
    await page.fill("#prompt", "Tell me about the harbor.");
    await page.fill("#temperature", "1");
    await page.fill("#seed", "11");
    await page.fill("#max_tokens", "48");
    await page.selectOption("#spec-policy", "fixed");
    await page.fill("#spec-k", "4");
    const stream = await ask(page, "/v1/chat/completions");

    // The detail arrived as it happened (with the chunks), and once more, whole, on the final chunk.
    const perChunk = stream.filter((c) => c.choices?.[0] && !c.choices[0].finish_reason).flatMap((c) => (c.flock?.speculative?.tokens ?? []) as SpeculativeToken[]);
    const final = stream.find((c) => c.choices?.[0]?.finish_reason)!;
    const detail = final.flock.speculative.tokens as SpeculativeToken[];
    expect(perChunk).toEqual(detail);
    expect(stream.filter((c) => c.flock?.speculative?.tokens && !c.choices[0].finish_reason).length).toBeGreaterThan(1);
    const usage = stream.find((c) => c.usage)!.usage;
    expect(detail).toHaveLength(usage.completion_tokens);
    const origins = new Set(detail.map((d) => d.origin));
    expect(origins.has("accepted") && origins.has("recovered")).toBe(true);

    const spans = page.locator("#tokens .tok");
    expect(await spans.evaluateAll((s) => s.map((x) => x.getAttribute("data-origin")))).toEqual(detail.map((d) => d.origin));
    const classes = await spans.evaluateAll((s) => s.map((x) => x.className.split(" ")));
    classes.forEach((c, i) => {
      expect(c, `token ${i}`).toContain(`origin-${detail[i].origin}`);
      expect(c.includes("round-start"), `token ${i} starts a round`).toBe(i === 0 || detail[i - 1].round !== detail[i].round);
      expect(c.includes("undrafted")).toBe(detail[i].drafted === 0);
    });
    const content = stream.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
    const released = await page.locator("#tokens .tok:not(.unreleased)").allTextContents();
    expect(released.join("")).toBe(content);

    // The live panel shows the server's own figures at the end.
    const stats = Object.fromEntries(
      await page.locator("#stats dt").evaluateAll((dts) => dts.map((dt) => [dt.textContent, dt.nextElementSibling?.textContent])),
    ) as Record<string, string>;
    expect(stats["acceptance rate"]).toBe(`${(100 * final.flock.speculative.acceptance_rate).toFixed(1)}%`);
    expect(stats["mean candidate length"]).toBe(final.flock.speculative.mean_candidate_length.toFixed(2));
    expect(stats["tokens"]).toBe(String(detail.length));
    await expect.poll(() => page.locator("#rounds-figure").isVisible()).toBe(true);

    // Hovering a recovered token explains it, with the candidate the target rejected.
    const recovered = detail.findIndex((d) => d.origin === "recovered");
    await spans.nth(recovered).hover();
    const tip = page.locator("#tooltip");
    await expect.poll(() => tip.isVisible()).toBe(true);
    expect(await tip.textContent()).toMatch(/recovered.*rejected“/s);
    await page.screenshot({ path: join(ARTIFACTS, "playground-speculative.png"), fullPage: true });

    // Keyboard: focus the answer, walk the tokens.
    await page.mouse.move(0, 0);
    await page.locator("#tokens").focus();
    await page.keyboard.press("End");
    expect(await page.locator("#tokens").getAttribute("aria-activedescendant")).toBe(`tok-${detail.length - 1}`);
    await page.keyboard.press("ArrowLeft");
    expect(await page.locator("#tokens .tok.selected").getAttribute("id")).toBe(`tok-${detail.length - 2}`);
    expect(await tip.textContent()).toContain(`#${detail.length - 1}`);

    expect(problems).toEqual([]);
    await page.close();
  });

  it("raw prompt on a fused model: the expert and α of every token, α over time, expert usage", async () => {
    problems.length = 0;
    const page = await open(t.url);
    await page.selectOption("#model", "fused");
    await page.check("input[name=mode][value=completion]");
    await page.fill("#prompt", "The cook");
    await page.fill("#seed", "3");
    await page.fill("#max_tokens", "32");
    const stream = await ask(page, "/v1/completions");
    const final = stream.find((c) => c.choices?.[0]?.finish_reason)!;
    const fusion = final.flock.fusion.tokens as Array<{ expert: string | null; alpha: number }>;
    expect(fusion.length).toBeGreaterThan(0);
    const perChunk = stream.filter((c) => !c.choices?.[0]?.finish_reason).flatMap((c) => c.flock?.fusion?.tokens ?? []);
    expect(perChunk).toEqual(fusion);

    const spans = page.locator("#tokens .tok");
    const marked = await spans.evaluateAll((s) => s.map((x) => x.classList.contains("has-expert")));
    expect(marked).toEqual(fusion.map((f) => f.expert !== null));
    expect(await spans.evaluateAll((s) => s.map((x) => x.getAttribute("data-origin")))).toEqual(fusion.map(() => "plain"));
    await expect.poll(() => page.locator("#alpha-figure").isVisible()).toBe(true);
    await expect.poll(() => page.locator("#experts-figure").isVisible()).toBe(true);
    const withExpert = fusion.findIndex((f) => f.expert !== null);
    if (withExpert >= 0) {
      await spans.nth(withExpert).hover();
      expect(await page.locator("#tooltip").textContent()).toContain(`${fusion[withExpert].expert} α = ${fusion[withExpert].alpha.toFixed(2)}`);
    }
    await page.screenshot({ path: join(ARTIFACTS, "playground-fusion.png"), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("a routed model: each token's experts with their weights, and expert usage", async (ctx) => {
    if (!routedLora) ctx.skip(); // the prebuilt binary has no routed LoRA
    problems.length = 0;
    const page = await open(t.url);
    expect(await page.locator("#model option").allTextContents()).toEqual(expect.arrayContaining(["routing+phatgoose (routed)", "routing+arrow (routed)"]));
    await page.selectOption("#model", "routing+phatgoose");
    await page.fill("#prompt", "the cook mixes the soup in the harbor");
    await page.fill("#temperature", "0");
    await page.fill("#max_tokens", "24");
    const stream = await ask(page, "/v1/chat/completions");
    const final = stream.find((c) => c.choices?.[0]?.finish_reason)!;
    const routing = final.flock.routing.tokens as Array<{ experts: Array<{ expert: string; weight: number }> } | null>;
    expect(routing.length).toBeGreaterThan(0);
    expect(stream.filter((c) => !c.choices?.[0]?.finish_reason).flatMap((c) => c.flock?.routing?.tokens ?? [])).toEqual(routing);

    const spans = page.locator("#tokens .tok");
    expect(await spans.evaluateAll((s) => s.map((x) => x.classList.contains("has-expert")))).toEqual(routing.map((r) => (r?.experts.length ?? 0) > 0));
    await expect.poll(() => page.locator("#experts-figure").isVisible()).toBe(true);
    const first = routing.findIndex((r) => (r?.experts.length ?? 0) > 0);
    await spans.nth(first).hover();
    const top = routing[first]!.experts[0];
    expect(await page.locator("#tooltip").textContent()).toContain(`${top.expert} ${(100 * top.weight).toFixed(top.weight >= 0.995 ? 0 : 1)}%`);
    await page.screenshot({ path: join(ARTIFACTS, "playground-routing.png"), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("sends a JSON schema and tools: the answer parses, and a required call shows in the finish line", async () => {
    problems.length = 0;
    const page = await open(t.url);
    await page.selectOption("#model", "spec");
    await page.fill("#prompt", "A boat, as JSON.");
    await page.fill("#seed", "3");
    await page.fill("#max_tokens", "200");
    await page.locator("#structured-options summary").click();
    const schema = { type: "object", properties: { name: { type: "string", maxLength: 8 }, crew: { type: "integer", minimum: 1, maximum: 9 } }, required: ["name", "crew"], additionalProperties: false };
    await page.fill("#json-schema", JSON.stringify(schema));
    const stream = await ask(page, "/v1/chat/completions");
    const text = stream.map((c) => c.choices?.[0]?.delta?.content ?? "").join("");
    expect(Object.keys(JSON.parse(text)).sort()).toEqual(["crew", "name"]);
    expect(await page.locator("#tokens .tok").count()).toBeGreaterThan(5);
    // Again: the schema's masks are cached now, and a seeded (coupled) round proposes the tokens
    // they force without the draft, in their own colour.
    await page.locator("#clear").click();
    await page.fill("#prompt", "A boat, as JSON.");
    await ask(page, "/v1/chat/completions");
    expect(await page.locator("#tokens .tok.origin-forced").count()).toBeGreaterThan(0);
    await page.locator("#clear").click();
    await page.fill("#json-schema", "");
    await page.fill("#tools", JSON.stringify([{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string", maxLength: 8 } }, required: ["city"] } } }]));
    await page.selectOption("#tool-choice", "required");
    await page.fill("#prompt", "Weather in Paris?");
    const called = await ask(page, "/v1/chat/completions");
    expect(called.find((c) => c.choices?.[0]?.finish_reason)?.choices[0].finish_reason).toBe("tool_calls");
    await expect.poll(() => page.locator("#finish").textContent()).toContain("called: → get_weather {");
    // A box that is not JSON is an error on the page, and nothing is sent.
    await page.fill("#tools", "[oops");
    await page.fill("#prompt", "Again?");
    await page.locator("#prompt").press("Control+Enter");
    await expect.poll(() => page.locator("#error").textContent()).toContain("tools list is not JSON");
    expect(problems).toEqual([]);
    await page.screenshot({ path: join(ARTIFACTS, "playground-structured.png") });
    await page.close();
  });

  it("asks for the API key when the server wants one, and works with it", async () => {
    const guarded = await startTestServer({ auth: { apiKeys: ["playground-key"] }, models: [{ id: "plain", path: forgedPath(t.manifest.models["flock-demo"].file), parallel: 1 }] });
    try {
      problems.length = 0;
      const page = await browser.newPage();
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(m.text());
      });
      await page.goto(guarded.url);
      const dialog = page.locator("#key-dialog");
      await expect.poll(() => dialog.isVisible()).toBe(true);
      await page.fill("#key-input", "wrong-key");
      await page.keyboard.press("Enter");
      await expect.poll(() => page.locator("#key-message").textContent()).toContain("did not accept");
      await page.fill("#key-input", "playground-key");
      await page.keyboard.press("Enter");
      await page.locator("#model option").first().waitFor({ state: "attached" });
      expect(await page.locator("#model").inputValue()).toBe("plain");
      await page.fill("#max_tokens", "8");
      const stream = await ask(page, "/v1/chat/completions");
      expect(stream.some((c) => c.choices?.[0]?.delta?.content)).toBe(true);
      expect(await page.locator("#tokens .tok.origin-plain").count()).toBeGreaterThan(0);
      // The browser reports each refused request (the probe and the wrong key); nothing else.
      expect(problems.every((p) => p.includes("401"))).toBe(true);
      await page.close();
    } finally {
      await guarded.close();
    }
  });
});
