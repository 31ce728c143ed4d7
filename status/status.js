// luaproxy status page: polls the admin API and draws what it says. Standard JavaScript
// only (no framework, no build step), served from the runtime directory's status/.
// Rates and quantiles are computed here from two successive /metrics scrapes: a counter's
// delta over the time between them, and histogram quantiles from the buckets' deltas.
"use strict";

(function () {
  const TOKEN_KEY = "luaproxy-admin-token";
  const HISTORY_MS = 5 * 60 * 1000; // sparklines cover the last five minutes
  const nf = new Intl.NumberFormat("en-US");
  const nf1 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    paused: false,
    interval: 2000,
    timer: null,
    prev: null, // the previous scrape: { t, metrics, status }
    hist: [], // { t, rps, p50, p99 }
    scrapes: 0,
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // An element with attributes and children (strings become text: no markup from data).
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) {
      if (k === undefined || k === null) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }

  function replaceRows(tbody, rows, empty, cols) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "muted" }, empty))]));
  }

  // ---- formatting ----

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s >= 1) return s.toFixed(2) + " s";
    if (s >= 0.001) return nf1.format(s * 1000) + " ms";
    return Math.round(s * 1e6) + " µs";
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !isFinite(r)) return "–";
    return r >= 100 ? nf.format(Math.round(r)) : nf1.format(r);
  }

  function fmtBytes(b) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : String(b)) + " " + units[i];
  }

  function fmtDuration(sec) {
    const d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24, m = Math.floor(sec / 60) % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m + "m " + Math.floor(sec % 60) + "s";
  }

  function setOutput(id, value, text) {
    const o = $(id);
    o.dataset.value = value === null || value === undefined || !isFinite(value) ? "" : String(value);
    o.textContent = text;
  }

  // ---- fetching ----

  class AuthError extends Error {}

  async function get(path, asText) {
    const headers = {};
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const r = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (r.status === 401) throw new AuthError(path);
    if (!r.ok) {
      const e = new Error(path + ": HTTP " + r.status);
      e.status = r.status;
      throw e;
    }
    return asText ? r.text() : r.json();
  }

  // ---- Prometheus text format ----

  // { name: [ { labels: {k: v}, value: number } ] }
  function parseMetrics(text) {
    const out = Object.create(null);
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      let i = 0;
      while (i < line.length && line[i] !== "{" && line[i] !== " ") i++;
      const name = line.slice(0, i);
      const labels = {};
      if (line[i] === "{") {
        i++;
        while (i < line.length && line[i] !== "}") {
          let j = line.indexOf("=", i);
          if (j < 0) break;
          const key = line.slice(i, j).trim();
          i = j + 2; // past ="
          let v = "";
          while (i < line.length && line[i] !== '"') {
            if (line[i] === "\\" && i + 1 < line.length) {
              const c = line[i + 1];
              v += c === "n" ? "\n" : c;
              i += 2;
            } else {
              v += line[i++];
            }
          }
          labels[key] = v;
          i++; // the closing quote
          if (line[i] === ",") i++;
        }
        i++; // }
      }
      const rest = line.slice(i).trim().split(/\s+/);
      const value = rest[0] === "+Inf" ? Infinity : rest[0] === "-Inf" ? -Infinity : Number(rest[0]);
      (out[name] = out[name] || []).push({ labels, value });
    }
    return out;
  }

  // Sum of a metric's samples, by the value of one label ("" for all in one).
  function sumBy(m, name, label) {
    const res = new Map();
    for (const s of (m && m[name]) || []) {
      const k = label ? s.labels[label] || "" : "";
      res.set(k, (res.get(k) || 0) + s.value);
    }
    return res;
  }

  function total(m, name) {
    return sumBy(m, name, null).get("") || 0;
  }

  // A histogram's cumulative buckets by one label: key -> Map(le -> count).
  function bucketsBy(m, base, label) {
    const res = new Map();
    for (const s of (m && m[base + "_bucket"]) || []) {
      const k = label ? s.labels[label] || "" : "";
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      if (!res.has(k)) res.set(k, new Map());
      const b = res.get(k);
      b.set(le, (b.get(le) || 0) + s.value);
    }
    return res;
  }

  // The q-quantile of the observations between two scrapes of cumulative buckets, with
  // linear interpolation inside the bucket (as Prometheus' histogram_quantile). null when
  // nothing was observed in between.
  function quantile(q, now, before) {
    if (!now) return null;
    const les = [...now.keys()].sort((a, b) => a - b);
    const delta = les.map((le) => Math.max(0, now.get(le) - ((before && before.get(le)) || 0)));
    const n = delta[delta.length - 1];
    if (!n) return null;
    const rank = q * n;
    for (let i = 0; i < les.length; i++) {
      if (delta[i] >= rank) {
        if (les[i] === Infinity) return i > 0 ? les[i - 1] : null;
        const lo = i > 0 ? les[i - 1] : 0, below = i > 0 ? delta[i - 1] : 0;
        const inBucket = delta[i] - below;
        return inBucket > 0 ? lo + (les[i] - lo) * ((rank - below) / inBucket) : les[i];
      }
    }
    return null;
  }

  function rate(now, before, dt) {
    if (before === undefined || dt <= 0 || now < before) return null; // none yet, or a restart
    return (now - before) / dt;
  }

  // ---- sparklines ----

  function spark(id, key, fmt, label) {
    const pts = state.hist.filter((h) => h[key] !== null && isFinite(h[key]));
    const svg = $(id + "-spark");
    svg.replaceChildren();
    if (pts.length < 2) {
      svg.setAttribute("aria-label", label + ": not enough data yet");
      $(id + "-range").textContent = "";
      return;
    }
    // The x axis spans what is kept: up to HISTORY_MS, less until that much was seen.
    const t1 = pts[pts.length - 1].t, t0 = pts[0].t, width = t1 - t0 || 1;
    const vals = pts.map((p) => p[key]);
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const poly = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    poly.setAttribute("points", pts.map((p) =>
      ((p.t - t0) / width * 240).toFixed(1) + "," + (46 - (p[key] - lo) / span * 44).toFixed(1)).join(" "));
    svg.append(poly);
    const secs = Math.round(width / 1000);
    const text = "last " + (secs < 120 ? secs + " s" : Math.round(secs / 60) + " min") + ": low " + fmt(lo) +
      ", high " + fmt(hi) + ", now " + fmt(vals[vals.length - 1]);
    svg.setAttribute("aria-label", label + ", " + text);
    $(id + "-range").textContent = text;
  }

  // ---- sections ----

  // A bar of pct percent; its width set through the CSSOM (the page's CSP allows no inline style).
  function meter(pct) {
    const fill = el("span");
    fill.style.width = pct.toFixed(1) + "%";
    return el("span", { class: "meter", "aria-hidden": "true" }, fill);
  }

  function drawStatus(st) {
    $("instance").textContent = "v" + st.version + " · pid " + st.pid + " · " + st.workers + " workers · " + st.config;
    setOutput("connections", st.connections, nf.format(st.connections));
    setOutput("generation", st.generation, String(st.generation));
    $("uptime").textContent = fmtDuration(st.uptime);
    const rows = Object.entries(st.shared || {}).sort().map(([name, d]) => {
      const pct = d.capacity ? Math.min(100, (d.used / d.capacity) * 100) : 0;
      return el("tr", {},
        el("th", { scope: "row" }, name),
        el("td", {},
          meter(pct),
          fmtBytes(d.used) + " of " + fmtBytes(d.capacity) + " (" + nf1.format(pct) + "%)"),
        el("td", { class: "num" }, nf.format(d.entries)),
        el("td", { class: "num" }, nf.format(d.evictions)));
    });
    replaceRows($("shared-body"), rows, "no shared dicts in this config", 4);
  }

  function drawTraffic(now, prev, st) {
    const dt = prev ? (now.t - prev.t) / 1000 : 0;
    const m = now.metrics, pm = prev && prev.metrics;
    let reqs, prevReqs, p50 = null, p99 = null;
    if (m) {
      reqs = total(m, "luaproxy_requests_total");
      prevReqs = pm ? total(pm, "luaproxy_requests_total") : undefined;
      if (pm) {
        const b = bucketsBy(m, "luaproxy_request_duration_seconds", null).get("");
        const pb = bucketsBy(pm, "luaproxy_request_duration_seconds", null).get("");
        p50 = quantile(0.5, b, pb);
        p99 = quantile(0.99, b, pb);
      }
    } else {
      // No /metrics: the request count of /status still gives the rate.
      reqs = st.requests;
      prevReqs = prev && prev.status ? prev.status.requests : undefined;
    }
    const rps = rate(reqs, prevReqs, dt);
    setOutput("total-requests", reqs, nf.format(reqs));
    setOutput("rps", rps, fmtRate(rps));
    setOutput("p50", p50, fmtSeconds(p50));
    setOutput("p99", p99, fmtSeconds(p99));
    if (prev) {
      state.hist.push({ t: now.t, rps, p50, p99 });
      while (state.hist.length && state.hist[0].t < now.t - HISTORY_MS) state.hist.shift();
    }
    spark("rps", "rps", fmtRate, "Requests per second");
    spark("p50", "p50", fmtSeconds, "Latency p50");
    spark("p99", "p99", fmtSeconds, "Latency p99");
  }

  function drawCodes(now, prev) {
    const m = now.metrics, dt = prev ? (now.t - prev.t) / 1000 : 0;
    if (!m) return;
    const cur = sumBy(m, "luaproxy_requests_total", "code");
    const old = prev && prev.metrics ? sumBy(prev.metrics, "luaproxy_requests_total", "code") : new Map();
    const rows = [...cur.keys()].sort().map((code) => el("tr", { "data-code": code },
      el("th", { scope: "row", class: code[0] === "5" ? "bad" : code[0] === "4" ? "warn" : null }, code),
      el("td", { class: "num" }, nf.format(cur.get(code))),
      el("td", { class: "num" }, fmtRate(rate(cur.get(code), old.get(code), dt)))));
    replaceRows($("codes-body"), rows, "no requests yet", 3);
  }

  function drawRoutes(now, prev) {
    const m = now.metrics, pm = prev && prev.metrics, dt = prev ? (now.t - prev.t) / 1000 : 0;
    if (!m) return;
    const cur = sumBy(m, "luaproxy_requests_total", "route");
    const old = pm ? sumBy(pm, "luaproxy_requests_total", "route") : new Map();
    const b = bucketsBy(m, "luaproxy_request_duration_seconds", "route");
    const pb = pm ? bucketsBy(pm, "luaproxy_request_duration_seconds", "route") : new Map();
    const errs = new Map();
    for (const s of m.luaproxy_requests_total || [])
      if (s.labels.code === "5xx") errs.set(s.labels.route || "", (errs.get(s.labels.route || "") || 0) + s.value);
    const rows = [...cur.keys()].sort().map((r) => el("tr", {},
      el("th", { scope: "row" }, r === "" ? "(no route matched)" : r),
      el("td", { class: "num" }, fmtRate(rate(cur.get(r), old.get(r), dt))),
      el("td", { class: "num" }, nf.format(cur.get(r))),
      el("td", { class: "num" }, fmtSeconds(pm ? quantile(0.5, b.get(r), pb.get(r)) : null)),
      el("td", { class: "num" }, fmtSeconds(pm ? quantile(0.99, b.get(r), pb.get(r)) : null)),
      el("td", { class: "num" + ((errs.get(r) || 0) > 0 ? " bad" : "") }, nf.format(errs.get(r) || 0))));
    replaceRows($("routes-body"), rows, "no requests yet", 6);
  }

  function drawUpstreams(ups, m) {
    const key = (u, t) => u + "\u0000" + t;
    const gauge = (name) => {
      const g = new Map();
      for (const s of (m && m[name]) || []) g.set(key(s.labels.upstream, s.labels.target), s.value);
      return g;
    };
    const inflight = gauge("luaproxy_upstream_inflight"), ewma = gauge("luaproxy_upstream_latency_ewma_seconds");
    const queue = sumBy(m, "luaproxy_upstream_queue_length", "upstream");
    const body = $("upstreams-body");
    if (!ups.length) {
      body.replaceChildren(el("p", { class: "muted" }, "no upstreams in this config"));
      return;
    }
    body.replaceChildren(...ups.map((u) => {
      const rows = u.targets.map((t) => {
        const k = key(u.name, t.address);
        return el("tr", { "data-target": t.address },
          el("th", { scope: "row" }, t.address, t.name ? el("span", { class: "muted" }, " (" + t.name + ")") : null),
          el("td", { class: "state-" + t.state }, t.state),
          el("td", { class: "num" }, String(t.weight)),
          el("td", { class: "num" }, inflight.has(k) ? nf.format(inflight.get(k)) : "–"),
          el("td", { class: "num" }, ewma.has(k) ? fmtSeconds(ewma.get(k)) : "–"),
          el("td", { class: "num" }, nf.format(t.successes)),
          el("td", { class: "num" + (t.failures ? " bad" : "") }, nf.format(t.failures)));
      });
      const q = queue.get(u.name);
      return el("div", { class: "upstream" },
        el("h3", {}, u.name, el("span", { class: "muted" },
          " · " + u.balance + (u.active_checks ? " · active checks" : "") + (q !== undefined ? " · queue " + q : ""))),
        el("table", {},
          el("caption", { class: "sr" }, "Targets of upstream " + u.name),
          el("thead", {}, el("tr", {}, ...["Target", "Health", "Weight", "In flight", "EWMA latency", "Successes", "Failures"]
            .map((h, i) => el("th", { scope: "col", class: i > 1 ? "num" : null }, h)))),
          el("tbody", {}, ...rows)));
    }));
  }

  function drawErrors(e) {
    $("errors-total").textContent = nf.format(e.total);
    const items = e.errors.map((x) => el("li", { class: x.level === "error" ? "bad" : "warn" },
      el("time", { datetime: x.time }, x.time.replace("T", " ").replace("Z", "")),
      el("span", { class: "sr" }, x.level + ": "), x.message));
    $("errors-body").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "no errors or warnings since start")]));
  }

  function drawLua(now, prev, st) {
    const m = now.metrics, pm = prev && prev.metrics, dt = prev ? (now.t - prev.t) / 1000 : 0;
    if (st.lua)
      $("lua-summary").textContent = "Timers pending " + st.lua.timers_pending + ", running " + st.lua.timers_running +
        ", refused " + st.lua.timers_refused + (m && m.luaproxy_lua_memory_bytes ? "; Lua memory " +
        fmtBytes(total(m, "luaproxy_lua_memory_bytes")) + " over all workers" : "") + ".";
    if (!m) return;
    const cpu = sumBy(m, "luaproxy_lua_plugin_seconds_total", "plugin");
    const old = pm ? sumBy(pm, "luaproxy_lua_plugin_seconds_total", "plugin") : new Map();
    const errs = sumBy(m, "luaproxy_lua_errors_total", "plugin");
    const stops = sumBy(m, "luaproxy_lua_watchdog_stops_total", "plugin");
    const names = new Set([...cpu.keys(), ...errs.keys(), ...stops.keys()]);
    const rows = [...names].sort().map((p) => {
      const r = rate(cpu.get(p) || 0, old.get(p), dt);
      return el("tr", {},
        el("th", { scope: "row" }, p),
        el("td", { class: "num" }, r === null ? "–" : nf1.format(r * 1000)),
        el("td", { class: "num" }, (cpu.get(p) || 0).toFixed(3)),
        el("td", { class: "num" + (errs.get(p) ? " bad" : "") }, nf.format(errs.get(p) || 0)),
        el("td", { class: "num" + (stops.get(p) ? " bad" : "") }, nf.format(stops.get(p) || 0)));
    });
    replaceRows($("lua-body"), rows, "no plugins", 5);
  }

  function drawReloads(r) {
    const rows = r.reloads.map((x) => el("tr", { "data-ok": String(x.ok) },
      el("td", {}, String(x.generation)),
      el("td", {}, el("time", { datetime: x.time }, x.time.replace("T", " ").replace("Z", ""))),
      el("td", {}, x.by),
      el("td", { class: x.ok ? "good" : "bad" }, x.ok ? "ok" : "failed: " + x.error),
      el("td", { class: "num" }, fmtSeconds(x.took_ms / 1000))));
    replaceRows($("reloads-body"), rows, "none yet", 5);
  }

  // ---- the loop ----

  function setLive(text, cls) {
    const p = $("live");
    p.textContent = text;
    p.className = cls || "";
  }

  function showLogin(message) {
    clearTimeout(state.timer);
    state.timer = null;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("forget").hidden = true;
    setLive("waiting for a token", "warn");
    $("token").focus();
  }

  async function refresh() {
    if (state.busy) return;
    state.busy = true;
    try {
      const [st, ups, errs, rel, met] = await Promise.allSettled([
        get("/status"), get("/upstreams"), get("/errors"), get("/reloads"), get("/metrics", true)]);
      const all = [st, ups, errs, rel, met];
      if (all.some((x) => x.status === "rejected" && x.reason instanceof AuthError)) {
        if (state.token) sessionStorage.removeItem(TOKEN_KEY);
        const had = !!state.token;
        state.token = null;
        showLogin(had ? "That token was refused." : "");
        return;
      }
      if (st.status === "rejected") throw st.reason;
      const now = { t: Date.now(), status: st.value, metrics: null };
      const note = $("metrics-note");
      if (met.status === "fulfilled") {
        now.metrics = parseMetrics(met.value);
        note.hidden = true;
      } else {
        note.hidden = false;
        note.textContent = "GET /metrics is not available (" + met.reason.message +
          "): request rate from /status; latency, status codes, routes and Lua cost need /metrics.";
      }
      const prev = state.prev;
      drawStatus(now.status);
      drawTraffic(now, prev, now.status);
      drawCodes(now, prev);
      drawRoutes(now, prev);
      drawLua(now, prev, now.status);
      if (ups.status === "fulfilled") drawUpstreams(ups.value.upstreams, now.metrics);
      if (errs.status === "fulfilled") drawErrors(errs.value);
      if (rel.status === "fulfilled") drawReloads(rel.value);
      state.prev = now;
      state.scrapes++;
      document.body.dataset.scrapes = String(state.scrapes);
      document.body.dataset.updated = String(now.t);
      $("forget").hidden = !state.token;
      setLive("live · updated " + new Date(now.t).toISOString().slice(11, 19) + " UTC", "good");
    } catch (e) {
      setLive("cannot reach the admin API: " + e.message, "bad");
    } finally {
      state.busy = false;
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = state.paused || !$("login").hidden ? null : setTimeout(refresh, state.interval);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    state.token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    $("login").hidden = true;
    $("main").focus();
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin("");
  });
  $("interval").addEventListener("change", (ev) => {
    state.interval = Number(ev.target.value);
    schedule();
  });
  $("pause").addEventListener("click", (ev) => {
    state.paused = !state.paused;
    ev.target.setAttribute("aria-pressed", String(state.paused));
    ev.target.textContent = state.paused ? "Resume" : "Pause";
    if (state.paused) setLive("paused", "warn");
    else refresh();
    schedule();
  });
  refresh();
})();
