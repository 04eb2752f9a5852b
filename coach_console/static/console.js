// Vigil coach console: live queue (Server-Sent Events), countdowns, local times, idle logoff
// warning. Plain JavaScript served by Vigil; no framework, no CDN, no inline script (the CSP
// allows scripts from this origin only). The server renders every row; this script only asks
// for fresh HTML and swaps it in.
(function () {
  "use strict";

  var body = document.body;

  // --- times: <time datetime=... data-local> shown in the viewer's own zone ------------------
  function localizeTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) { return; }
      el.title = el.textContent;
      el.textContent = d.toLocaleString(undefined, {
        month: "short", day: "numeric", hour: "2-digit", minute: "2-digit"
      });
      el.removeAttribute("data-local");
    });
  }

  // --- countdowns: SLA deadlines and recheck timers --------------------------------------------
  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function formatSpan(seconds) {
    var s = Math.abs(Math.round(seconds));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var text = h > 0 ? h + ":" + pad(m) + ":" + pad(s % 60) : m + ":" + pad(s % 60);
    if (h >= 48) { text = Math.floor(h / 24) + " d"; }
    return text;
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-due]").forEach(function (el) {
      var due = Date.parse(el.getAttribute("data-due"));
      if (isNaN(due)) { return; }
      var left = (due - now) / 1000;
      el.textContent = left >= 0 ? formatSpan(left) + " left" : "overdue " + formatSpan(left);
      el.classList.toggle("overdue", left < 0);
      el.classList.toggle("soon", left >= 0 && left < 120);
    });
  }

  // --- the live queue --------------------------------------------------------------------------
  var refreshTimer = null;
  var refreshing = false;
  var again = false;

  function rowIds(root) {
    var ids = {};
    root.querySelectorAll("tr[data-alert-id]").forEach(function (tr) {
      ids[tr.getAttribute("data-alert-id")] = true;
    });
    return ids;
  }

  function toLogin(reason) {
    window.location.assign("/login?msg=" + encodeURIComponent(reason));
  }

  function refreshQueue() {
    var live = document.getElementById("queue-live");
    if (!live) { return; }
    if (refreshing) { again = true; return; }
    refreshing = true;
    var before = rowIds(live);
    fetch("/queue/rows", { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (resp) {
        if (resp.redirected || resp.status === 401 || resp.status === 403) {
          toLogin("idle");
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined) { return; }
        live.innerHTML = html;
        live.querySelectorAll("tr[data-alert-id]").forEach(function (tr) {
          if (!before[tr.getAttribute("data-alert-id")]) { tr.classList.add("new"); }
        });
        localizeTimes(live);
        tick();
      })
      .catch(function () { /* the next event or reconnect retries */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; scheduleRefresh(); }
      });
  }

  function scheduleRefresh() {
    if (refreshTimer !== null) { return; }
    // Coalesce bursts (a flood of readings) into one fetch.
    refreshTimer = window.setTimeout(function () { refreshTimer = null; refreshQueue(); }, 100);
  }

  function setStatus(text, cls) {
    var el = document.getElementById("live-status");
    if (!el) { return; }
    el.textContent = text;
    el.className = "live-status " + cls;
  }

  function connect() {
    if (!window.EventSource) { setStatus("live updates unavailable", "off"); return; }
    var source = new EventSource("/events");
    source.addEventListener("open", function () {
      setStatus("live", "on");
      body.setAttribute("data-live-connected", "1");
    });
    source.addEventListener("alert", function () { scheduleRefresh(); });
    source.addEventListener("logout", function () { source.close(); toLogin("idle"); });
    source.addEventListener("error", function () {
      body.removeAttribute("data-live-connected");
      if (source.readyState === EventSource.CLOSED) {
        // The stream was refused (signed out): find out where we stand.
        setStatus("offline", "off");
        window.setTimeout(refreshQueue, 1000);
      } else {
        setStatus("reconnecting…", "off");
      }
    });
  }

  // --- idle logoff warning ---------------------------------------------------------------------
  function idleWatch() {
    if (!body.hasAttribute("data-signed-in")) { return; }
    var idle = parseInt(body.getAttribute("data-idle-seconds"), 10) * 1000;
    if (!(idle > 0)) { return; }
    var last = Date.now();
    var lastPing = Date.now();
    var warning = document.getElementById("idle-warning");

    function ping() {
      fetch("/session/ping", { credentials: "same-origin" }).then(function (resp) {
        if (resp.redirected) { toLogin("idle"); return; }
        last = Date.now();
        lastPing = last;
        if (warning) { warning.hidden = true; }
      });
    }
    // Typing and clicking are the person's activity: tell the server at most once a minute.
    ["keydown", "click"].forEach(function (type) {
      document.addEventListener(type, function () {
        if (Date.now() - lastPing > 60000) { ping(); }
      }, { passive: true });
    });
    var stay = document.getElementById("stay-signed-in");
    if (stay) { stay.addEventListener("click", ping); }
    window.setInterval(function () {
      var left = idle - (Date.now() - last);
      if (warning) { warning.hidden = left > 120000; }
      if (left <= 0) { toLogin("idle"); }
    }, 5000);
  }

  // --- forms: the outreach start time in the coach's own zone ----------------------------------
  function fillLocalNow() {
    var now = new Date();
    document.querySelectorAll("input[data-now-local]").forEach(function (el) {
      if (el.value) { return; }
      var local = new Date(now.getTime() - now.getTimezoneOffset() * 60000);
      el.value = local.toISOString().slice(0, 19);  // seconds too: response times count them
    });
    document.querySelectorAll("input[data-tz-offset]").forEach(function (el) {
      el.value = String(now.getTimezoneOffset());
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    tick();
    window.setInterval(tick, 1000);
    fillLocalNow();
    idleWatch();
    if (body.getAttribute("data-live") === "queue") { connect(); }
  });
})();
