/* Status page fallback (plain JS, no dependencies).
 *
 * Reflex events need its socket, so while this page's live link is down the page cannot
 * hear from the server. This script:
 *   - follows the live link's state from #browser-link[data-state] (rendered from Reflex's
 *     own client-side connection vars) and writes how long it has been in that state
 *     into #browser-link-since;
 *   - while the link is down ("reconnecting" or "lost") and the fallback is enabled, polls
 *     GET /api/v1/status every VITE_WS_RECONNECT_INTERVAL ms (doubling after each failed
 *     poll, at most VITE_WS_RECONNECT_ATTEMPTS times) and shows the result in
 *     #fallback-region, with a Retry that works over plain HTTP;
 *   - does the same while the link is up but the page's own time (#updated-at, written by
 *     the server once per refresh period) has not moved for STALE_PERIODS periods: behind
 *     a balancer, Reflex's state lives in Redis, and a Redis that is down or hung fails the
 *     page's updates while its socket stays connected (the REST status needs no Redis);
 *   - marks <html data-live="paused"> so live-only sections are dimmed.
 * Settings come from #status-settings, whose data attributes React renders from state vars
 * the running server fills in when the page loads (VITE_* set at run time apply without a
 * rebuild; before the first state arrives they hold the documented defaults), and from the
 * "frontend" block of each polled /api/v1/status, which wins once one has been read.
 */
(function () {
  "use strict";
  if (window.__statusFallback) return; // included once, even if the page re-renders
  window.__statusFallback = true;

  var LOCAL_HOSTS = ["localhost", "0.0.0.0", "::", "0:0:0:0:0:0:0:0"];
  var MAX_DELAY_MS = 5 * 60 * 1000;
  // The page's loop refreshes #updated-at every second (rxapp/state.py REFRESH_S), or every
  // VITE_WS_RECONNECT_INTERVAL ms when real-time updates are off.
  var REFRESH_MS = 1000;
  var STALE_PERIODS = 3;
  var FEED_WORDS = {
    connected: "Connected",
    connecting: "Connecting",
    reconnecting: "Reconnecting",
    circuit_open: "Circuit open (retries paused)",
    stopped: "Stopped",
  };
  var linkState = null;
  var linkSince = Date.now();
  var polling = false;
  var failures = 0;
  var timer = null;
  var nextAt = 0;
  var lastOk = null;
  var lastData = null;
  var retryNote = "";
  var observed = null;
  var served = null; // the server's VITE_* values, from the last polled status
  var updatedText = null; // #updated-at as last seen, and since when (browser time)
  var updatedSince = Date.now();

  function readSettings() {
    var el = document.getElementById("status-settings");
    if (!el) return null;
    var d = el.dataset;
    var settings = {
      fallback: d.fallbackEnabled !== "false",
      interval: Math.max(100, parseInt(d.pollIntervalMs, 10) || 3000),
      attempts: Math.max(0, parseInt(d.reconnectAttempts, 10) || 0),
      realTime: d.realTime !== "false",
      base: backendBase(d.apiUrl),
      statusPath: d.statusPath || "/api/v1/status",
    };
    if (served) {
      if (typeof served.fallback_enabled === "boolean") settings.fallback = served.fallback_enabled;
      if (served.reconnect_interval_ms > 0) settings.interval = Math.max(100, served.reconnect_interval_ms | 0);
      if (served.reconnect_attempts >= 0) settings.attempts = served.reconnect_attempts | 0;
    }
    settings.refresh = settings.realTime ? REFRESH_MS : settings.interval;
    return settings;
  }

  // The same rule as Reflex's getBackendURL: a local api_url means "this page's host".
  function backendBase(apiUrl) {
    try {
      var u = new URL(apiUrl || window.location.origin);
      if (LOCAL_HOSTS.indexOf(u.hostname) >= 0) {
        u.hostname = window.location.hostname;
        if (window.location.protocol === "https:") {
          u.protocol = "https:";
          u.port = "";
        }
      }
      return u.origin;
    } catch (e) {
      return window.location.origin;
    }
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return s % 60 ? m + " min " + (s % 60) + " s" : m + " min";
    var h = Math.floor(m / 60);
    return m % 60 ? h + " h " + (m % 60) + " min" : h + " h";
  }

  function isDown(state) {
    return state === "reconnecting" || state === "lost";
  }

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function render(settings) {
    var region = document.getElementById("fallback-region");
    if (!region) return;
    if (!polling) {
      region.replaceChildren();
      return;
    }
    var nodes = [];
    var head = el("p");
    head.appendChild(el("strong", "Live updates paused"));
    if (lastOk) {
      head.appendChild(document.createTextNode(", showing polled status from " + lastOk.toLocaleTimeString() + "."));
    } else {
      head.appendChild(document.createTextNode(failures ? ": the server is not answering either." : ": checking the status over plain HTTP…"));
    }
    nodes.push(head);
    if (lastData && lastData.upstream) {
      var up = lastData.upstream;
      var feed = "Market feed: " + (FEED_WORDS[up.state] || up.state);
      var retrying = up.state === "connecting" || up.state === "reconnecting";
      if (retrying && up.attempt && up.max_attempts) feed += " · attempt " + up.attempt + " of " + up.max_attempts;
      if (up.retry_after_s != null && up.state !== "connected") feed += " · next attempt in " + duration(Math.ceil(up.retry_after_s));
      if (up.last_error && up.state !== "connected") feed += " · " + up.last_error.message;
      nodes.push(el("p", feed, "fb-feed"));
      var prices = (lastData.ticks || []).map(function (t) {
        var digits = Math.max(0, Math.min(10, t.pip_size | 0));
        return t.symbol + " " + Number(t.quote).toFixed(digits) + (t.stale ? " (stale)" : "");
      });
      if (prices.length) nodes.push(el("p", "Prices: " + prices.join(" · "), "fb-prices"));
    }
    var foot = el("p", failures ? "The last check failed. " : "", "fb-muted");
    foot.appendChild(el("span", countdownText(), "fb-next"));
    if (lastData && lastData.upstream && lastData.upstream.state !== "connected") {
      var button = el("button", "Retry the market feed");
      button.type = "button";
      button.className = "rt-reset rt-BaseButton rt-r-size-1 rt-variant-soft rt-Button";
      button.style.marginLeft = "0.5rem";
      button.addEventListener("click", function () {
        retry(settings);
      });
      foot.appendChild(button);
    }
    nodes.push(foot);
    if (retryNote) nodes.push(el("p", retryNote, "fb-muted"));
    region.replaceChildren.apply(region, nodes);
  }

  function countdownText() {
    return "Next check in " + duration(Math.max(0, Math.ceil((nextAt - Date.now()) / 1000))) + ".";
  }

  // Once a second only the countdown changes: the rest (and a focused button) stays put.
  function updateCountdown() {
    var next = document.querySelector("#fallback-region .fb-next");
    if (next) next.textContent = countdownText();
  }

  function poll(settings) {
    window.clearTimeout(timer);
    var controller = new AbortController();
    var abort = window.setTimeout(function () {
      controller.abort();
    }, Math.min(10000, settings.interval * 2));
    fetch(settings.base + settings.statusPath, {
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: controller.signal,
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        lastData = data;
        lastOk = new Date();
        failures = 0;
        if (data && data.frontend) served = data.frontend;
      })
      .catch(function () {
        failures += 1;
      })
      .finally(function () {
        window.clearTimeout(abort);
        if (!polling) return;
        var current = readSettings() || settings;
        var delay = Math.min(MAX_DELAY_MS, current.interval * Math.pow(2, Math.min(failures, current.attempts)));
        nextAt = Date.now() + delay;
        render(current);
        timer = window.setTimeout(function () {
          poll(readSettings() || current);
        }, delay);
      });
  }

  function retry(settings) {
    retryNote = "Asking the server to retry…";
    render(settings);
    fetch(settings.base + "/api/v1/retry", { method: "POST", cache: "no-store" })
      .then(function (response) {
        return response.json();
      })
      .then(function (body) {
        retryNote = body.message || "Retry requested.";
      })
      .catch(function () {
        retryNote = "The server did not answer the retry request.";
      })
      .finally(function () {
        render(settings);
      });
  }

  // Measured by when the text last changed in this browser, not by the time it shows,
  // so a browser clock that differs from the server's changes nothing.
  function isStale(settings, state) {
    var updated = document.getElementById("updated-at");
    var text = updated ? updated.textContent : "";
    var now = Date.now();
    if (text !== updatedText) {
      updatedText = text;
      updatedSince = now;
    }
    if (state !== "connected" || !text) return false; // a link that is down is handled as such
    return now - updatedSince > STALE_PERIODS * settings.refresh;
  }

  function setPaused(settings, paused) {
    var live = paused ? "paused" : "live";
    if (document.documentElement.getAttribute("data-live") !== live) {
      document.documentElement.setAttribute("data-live", live);
    }
    if (paused && settings.fallback && !polling) {
      polling = true;
      failures = 0;
      retryNote = "";
      nextAt = Date.now();
      render(settings);
      poll(settings);
    } else if (!paused && polling) {
      polling = false;
      window.clearTimeout(timer);
      render(settings);
    }
  }

  // React hydrates the prerendered page after this script has run; a node changed before
  // that (the "for 12 s" text) no longer matches what React expects and fails hydration
  // (React error #418). The prerendered card says "connecting"; only React moves it on,
  // so the first other state means the page is React's and may be written to.
  var hydrated = false;

  function tick() {
    var settings = readSettings();
    var link = document.getElementById("browser-link");
    if (!settings || !link) return;
    if (!hydrated) {
      if ((link.getAttribute("data-state") || "connecting") === "connecting") return;
      hydrated = true;
    }
    if (observed !== link) {
      // React the moment the state changes, not at the next one-second tick.
      observed = link;
      new MutationObserver(tick).observe(link, { attributes: true, attributeFilter: ["data-state"] });
    }
    var state = link.getAttribute("data-state") || "connecting";
    if (state !== linkState) {
      linkState = state;
      linkSince = Date.now();
      updatedSince = linkSince; // a link that is back gets its periods before it counts as stale
    }
    setPaused(settings, isDown(state) || isStale(settings, state));
    var since = document.getElementById("browser-link-since");
    if (since) {
      var text = "for " + duration((Date.now() - linkSince) / 1000);
      if (since.textContent !== text) since.textContent = text;
    }
    if (polling) {
      var region = document.getElementById("fallback-region");
      if (region && !region.firstChild) render(settings);
      updateCountdown();
    }
  }

  window.setInterval(tick, 1000);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", tick);
  } else {
    tick();
  }
})();
