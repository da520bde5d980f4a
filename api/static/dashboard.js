// Herald dashboard: polls the live fragment every couple of seconds and posts the Retry forms
// with fetch, so the page never reloads. Without JavaScript the forms still work (full posts).
(() => {
  "use strict";
  const live = document.getElementById("live");
  if (!live) return;
  const state = document.getElementById("live-state");
  const notice = document.getElementById("notice");
  const pollMs = Number(live.dataset.pollMs) || 2000;
  const fragmentUrl = live.dataset.fragmentUrl + window.location.search;
  let lastHtml = null;
  let timer = null;
  let busy = false;

  function setState(name, text) {
    state.dataset.state = name;
    state.textContent = text;
  }

  function show(kind, text) {
    notice.hidden = false;
    notice.className = "notice notice-" + kind;
    notice.textContent = text;
  }

  function toLogin() {
    window.location.assign(live.dataset.loginUrl);
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const response = await fetch(fragmentUrl, {
        headers: { Accept: "text/html" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401) return toLogin();
      if (!response.ok) throw new Error("HTTP " + response.status);
      const html = await response.text();
      if (html !== lastHtml) {  // untouched DOM between changes: a click never lands on a replaced button
        live.innerHTML = html;
        lastHtml = html;
      }
      setState("live", "live · " + new Date().toLocaleTimeString());
    } catch (error) {
      setState("offline", "offline, retrying");
    } finally {
      busy = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      schedule();
    }, pollMs);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });

  live.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    event.preventDefault();
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (response.status === 401) return toLogin();
      const body = await response.json().catch(() => ({}));
      show(response.ok ? "ok" : "error", body.detail || "HTTP " + response.status);
    } catch (error) {
      show("error", "Network error: " + error.message);
    } finally {
      if (button) button.disabled = false;
    }
    await refresh();
  });

  refresh();
  schedule();
})();
