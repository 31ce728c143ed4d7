// Drives the status page in Debian's chromium (headless) for
// tests/integration/test_status_page.py. One command per line on stdin, one JSON answer
// per line on stdout:
//   open URL                  load the page; answers {login: bool} once it drew data or
//                             asked for a token
//   login TOKEN               type the token into the page's form (keyboard) and submit
//   sample                    the numbers and rows the page shows now
//   wait SCRAPES              until the page completed at least SCRAPES refreshes
//   keyboard N                Tab N times; the focused elements' descriptions
//   a11y                      landmarks, labels and text alternatives found
//   screenshot PATH           a full-page PNG
//   quit
// Errors answer {error: "..."}; the page's console errors and uncaught exceptions are
// reported in every answer (`pageErrors`).
"use strict";

const readline = require("readline");
let puppeteer;
try {
  puppeteer = require("puppeteer-core");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: "puppeteer-core is not installed in tests/browser " +
    "(./dev deps runs npm ci there): " + e.message }) + "\n");
  process.exit(3);
}

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT = Number(process.env.LP_BROWSER_TIMEOUT_MS || 30000);
const pageErrors = [];
let browser, page;

function answer(obj) {
  obj.pageErrors = pageErrors.slice();
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function open(url) {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container: chromium's sandbox needs user namespaces it may not have.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
      "--window-size=1280,1600"],
    defaultViewport: { width: 1280, height: 1600 },
  });
  page = await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push("console: " + m.text()); });
  page.on("pageerror", (e) => pageErrors.push("exception: " + e.message));
  await page.goto(url, { waitUntil: "load", timeout: STEP_TIMEOUT });
  await page.waitForFunction(
    () => Number(document.body.dataset.scrapes || 0) >= 1 || !document.getElementById("login").hidden,
    { timeout: STEP_TIMEOUT });
  return { login: await page.$eval("#login", (f) => !f.hidden) };
}

async function login(token) {
  // As a user would: the form has focus, the token is typed, Enter submits.
  await page.focus("#token");
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.waitForFunction(
    () => Number(document.body.dataset.scrapes || 0) >= 1 ||
      document.getElementById("login-error").textContent !== "",
    { timeout: STEP_TIMEOUT });
  return page.evaluate(() => ({
    login: !document.getElementById("login").hidden,
    loginError: document.getElementById("login-error").textContent,
    stored: sessionStorage.getItem("luaproxy-admin-token") !== null,
  }));
}

async function sample() {
  return page.evaluate(() => {
    const val = (id) => {
      const v = document.getElementById(id).dataset.value;
      return v === "" || v === undefined ? null : Number(v);
    };
    const rows = (sel) => [...document.querySelectorAll(sel)].map((tr) =>
      [...tr.children].map((td) => td.textContent.trim()));
    return {
      scrapes: Number(document.body.dataset.scrapes || 0),
      updated: Number(document.body.dataset.updated || 0),
      live: document.getElementById("live").textContent,
      rps: val("rps"), p50: val("p50"), p99: val("p99"),
      total: val("total-requests"), connections: val("connections"), generation: val("generation"),
      rpsText: document.getElementById("rps").textContent,
      rpsRange: document.getElementById("rps-range").textContent,
      rpsSparkLabel: document.getElementById("rps-spark").getAttribute("aria-label"),
      rpsSparkPoints: (document.querySelector("#rps-spark polyline") || { getAttribute: () => "" })
        .getAttribute("points").split(" ").filter(Boolean).length,
      metricsNote: document.getElementById("metrics-note").hidden ? "" :
        document.getElementById("metrics-note").textContent,
      codes: rows("#codes-body tr"),
      routes: rows("#routes-body tr"),
      targets: rows("#upstreams-body tbody tr"),
      errors: [...document.querySelectorAll("#errors-body li")].map((li) => li.textContent),
      lua: rows("#lua-body tr"),
      shared: rows("#shared-body tr"),
      reloads: rows("#reloads-body tr"),
    };
  });
}

async function waitScrapes(n) {
  await page.waitForFunction((k) => Number(document.body.dataset.scrapes || 0) >= k,
    { timeout: STEP_TIMEOUT }, n);
  return sample();
}

async function keyboard(n) {
  await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
  const seen = [];
  for (let i = 0; i < n; i++) {
    await page.keyboard.press("Tab");
    seen.push(await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return "";
      return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
        (e.getAttribute("href") ? "[" + e.getAttribute("href") + "]" : "");
    }));
  }
  return { focused: seen };
}

async function a11y() {
  return page.evaluate(() => {
    const named = (e) => {
      if (e.getAttribute("aria-label")) return true;
      if (e.id && document.querySelector('label[for="' + e.id + '"]')) return true;
      return e.textContent.trim() !== "";
    };
    const controls = [...document.querySelectorAll("button, select, input, textarea")];
    return {
      lang: document.documentElement.lang,
      landmarks: ["header", "nav", "main", "footer"].filter((t) => document.querySelector(t)),
      unnamedControls: controls.filter((e) => !named(e)).map((e) => e.outerHTML.slice(0, 80)),
      sparks: [...document.querySelectorAll("svg.spark")].map((s) => ({
        id: s.id, role: s.getAttribute("role"), label: s.getAttribute("aria-label") })),
      tablesWithoutCaption: [...document.querySelectorAll("table")].filter((t) => !t.caption).length,
      // WCAG contrast of the body text and the muted text on the page background.
      contrast: (() => {
        const rgb = (s) => s.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number);
        const lum = (c) => {
          const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
          return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
        const bg = rgb(getComputedStyle(document.body).backgroundColor);
        const muted = document.querySelector(".muted");
        return {
          body: ratio(rgb(getComputedStyle(document.body).color), bg),
          muted: muted ? ratio(rgb(getComputedStyle(muted).color), bg) : null,
        };
      })(),
    };
  });
}

async function run(line) {
  const sp = line.indexOf(" ");
  const cmd = sp < 0 ? line : line.slice(0, sp), arg = sp < 0 ? "" : line.slice(sp + 1);
  switch (cmd) {
    case "open": return open(arg);
    case "login": return login(arg);
    case "sample": return sample();
    case "wait": return waitScrapes(Number(arg));
    case "keyboard": return keyboard(Number(arg));
    case "a11y": return a11y();
    case "screenshot":
      // Nothing focused (the skip link would cover the header), scrolled to the top.
      await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
      await page.screenshot({ path: arg, fullPage: true });
      return { path: arg };
    case "quit":
      if (browser) await browser.close();
      browser = null;
      return { bye: true };
    default: throw new Error("unknown command " + cmd);
  }
}

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on("line", (line) => {
  chain = chain.then(async () => {
    try {
      answer(await run(line.trim()));
    } catch (e) {
      answer({ error: String(e && e.stack || e) });
    }
    if (line.trim() === "quit") process.exit(0);
  });
});
rl.on("close", () => {
  chain.then(async () => {
    if (browser) await browser.close();
    process.exit(0);
  });
});
