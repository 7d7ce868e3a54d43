/* Runs assets/fallback.js in Node against a minimal fake page, on fake time.
 *
 * usage: node fallback_harness.js <fallback.js> <scenario JSON>
 * The scenario is a list of steps: {"link": state}, {"updated": text}, {"advance": ms}
 * (in 100 ms steps, firing timers), {"settings": {data attributes}}, {"observe": label}.
 * Each "observe" prints one JSON line: the label, the polls made so far, <html data-live>,
 * and the text of #fallback-region.
 */
"use strict";
const fs = require("fs");
const vm = require("vm");

const [source, scenarioJson] = process.argv.slice(2);
const scenario = JSON.parse(scenarioJson);

let now = 1_700_000_000_000;
let nextTimer = 1;
const timers = new Map(); // id -> {at, fn, every}

class Node {
  constructor(tag) {
    this.tag = tag;
    this.children = [];
    this.attributes = {};
    this.dataset = {};
    this._text = "";
    this.className = "";
    this.style = {};
  }
  get firstChild() {
    return this.children[0] || null;
  }
  get textContent() {
    return this._text + this.children.map((c) => c.textContent).join("");
  }
  set textContent(value) {
    this._text = String(value);
    this.children = [];
  }
  appendChild(child) {
    this.children.push(child);
    return child;
  }
  replaceChildren(...nodes) {
    this._text = "";
    this.children = nodes;
  }
  getAttribute(name) {
    return name in this.attributes ? this.attributes[name] : null;
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
  addEventListener() {}
}

const byId = {
  "status-settings": new Node("div"),
  "browser-link": new Node("div"),
  "browser-link-since": new Node("span"),
  "updated-at": new Node("span"),
  "fallback-region": new Node("div"),
};
Object.assign(byId["status-settings"].dataset, {
  fallbackEnabled: "true",
  realTime: "true",
  pollIntervalMs: "1000",
  reconnectAttempts: "5",
  apiUrl: "http://localhost:3000",
  statusPath: "/api/v1/status",
});
byId["browser-link"].setAttribute("data-state", "connecting");
const html = new Node("html");

const polls = [];
const document = {
  readyState: "complete",
  documentElement: html,
  getElementById: (id) => byId[id] || null,
  querySelector: () => null,
  createElement: (tag) => new Node(tag),
  createTextNode: (text) => {
    const node = new Node("#text");
    node.textContent = text;
    return node;
  },
  addEventListener() {},
};
const window = {
  location: { origin: "http://localhost:3000", hostname: "localhost", protocol: "http:" },
  setInterval: (fn, ms) => {
    const id = nextTimer++;
    timers.set(id, { at: now + ms, fn, every: ms });
    return id;
  },
  setTimeout: (fn, ms) => {
    const id = nextTimer++;
    timers.set(id, { at: now + (ms || 0), fn, every: 0 });
    return id;
  },
  clearTimeout: (id) => timers.delete(id),
};
const status = { upstream: { state: "connected" }, ticks: [], frontend: {} };
const fetch = (url) => {
  polls.push(url);
  return Promise.resolve({ ok: true, json: () => Promise.resolve(status) });
};
class FakeDate extends Date {
  constructor(...args) {
    super(...(args.length ? args : [now]));
  }
  static now() {
    return now;
  }
}

const context = {
  window,
  document,
  fetch,
  Date: FakeDate,
  URL,
  AbortController,
  MutationObserver: class {
    observe() {}
  },
  Math,
  parseInt,
  Number,
  Promise,
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(source, "utf8"), context);

async function advance(ms) {
  const end = now + ms;
  while (now < end) {
    now = Math.min(end, now + 100);
    for (const [id, timer] of [...timers]) {
      if (timer.at <= now && timers.has(id)) {
        if (timer.every) timer.at += timer.every;
        else timers.delete(id);
        timer.fn();
      }
    }
    for (let i = 0; i < 10; i++) await Promise.resolve(); // settle the fetch promises
  }
}

(async () => {
  for (const step of scenario) {
    if ("link" in step) byId["browser-link"].setAttribute("data-state", step.link);
    if ("updated" in step) byId["updated-at"].textContent = step.updated;
    if ("settings" in step) Object.assign(byId["status-settings"].dataset, step.settings);
    if ("advance" in step) await advance(step.advance);
    if ("observe" in step) {
      const line = {
        label: step.observe,
        polls: polls.length,
        live: html.getAttribute("data-live"),
        region: byId["fallback-region"].textContent,
      };
      console.log(JSON.stringify(line));
    }
  }
})();
