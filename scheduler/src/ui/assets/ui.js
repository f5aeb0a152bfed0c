// Shoal's dashboard: keeps the live parts of a page current. The pages work
// without it (they are whole when served); this only refreshes them.
//
// - [data-live="URL"]: fetched again every second or two, its children
//   replaced by the answer (HTML the control plane rendered and escaped).
// - tbody[data-stream="URL"]: Server-Sent Events, one row per event,
//   written as text.
// - [data-log-stream="URL"]: Server-Sent Events, one line of log each,
//   written as text.
// A 401 from any of them means the session ended: back to the sign-in page.
"use strict";

(function () {
  const SIGN_IN = "/ui/sign-in";
  const REFRESH_MS = 1500;
  const MAX_ROWS = 500;
  const MAX_LINES = 2000;

  function setState(text) {
    const el = document.getElementById("stream-state");
    if (el) el.textContent = text;
  }

  function keepLive(el) {
    const url = el.dataset.live;
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const res = await fetch(url, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { "x-shoal-fragment": "1" },
        });
        if (res.status === 401) {
          window.location.assign(SIGN_IN);
          return;
        }
        if (!res.ok) {
          el.classList.add("stale");
          return;
        }
        const text = await res.text();
        const doc = new DOMParser().parseFromString(text, "text/html");
        el.replaceChildren(...Array.from(doc.body.childNodes));
        el.classList.remove("stale");
      } catch (e) {
        el.classList.add("stale");
      } finally {
        busy = false;
      }
    }
    window.setInterval(refresh, REFRESH_MS);
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function followEvents(tbody) {
    const source = new EventSource(tbody.dataset.stream);
    source.addEventListener("open", () => setState("live"));
    source.addEventListener("event", (msg) => {
      let e;
      try {
        e = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (tbody.querySelector('tr[data-seq="' + String(Number(e.seq)) + '"]')) return;
      // An event that stands for its repeats replaces its older row.
      if (typeof e.key === "string") {
        for (const old of tbody.querySelectorAll("tr[data-key]")) {
          if (old.dataset.key === e.key) old.remove();
        }
      }
      const tr = document.createElement("tr");
      tr.className = e.warning ? "event warning fresh" : "event fresh";
      tr.dataset.seq = String(Number(e.seq));
      if (typeof e.key === "string") tr.dataset.key = e.key;
      tr.append(
        cell(e.when, "when"),
        cell(e.object),
        cell(e.reason, "reason"),
        cell(e.message),
        cell(e.by, "muted"),
      );
      tbody.prepend(tr);
      while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
    });
    source.addEventListener("end", (msg) => {
      source.close();
      setState("stopped: " + msg.data);
      if (msg.data === "signed out") window.location.assign(SIGN_IN);
    });
    source.addEventListener("error", () => setState("reconnecting"));
  }

  function followLog(pre) {
    const source = new EventSource(pre.dataset.logStream);
    source.addEventListener("open", () => setState("following"));
    source.addEventListener("line", (msg) => {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      const line = document.createElement("span");
      line.className = "line";
      line.textContent = msg.data + "\n";
      pre.append(line);
      while (pre.childElementCount > MAX_LINES) pre.firstElementChild.remove();
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("end", (msg) => {
      source.close();
      setState("ended: " + msg.data);
    });
    // A reconnect would replay the whole log: stop instead.
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) source.close();
      setState("disconnected; reload the page to follow again");
    });
  }

  function start() {
    document.querySelectorAll("[data-live]").forEach(keepLive);
    document.querySelectorAll("tbody[data-stream]").forEach(followEvents);
    document.querySelectorAll("[data-log-stream]").forEach(followLog);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
