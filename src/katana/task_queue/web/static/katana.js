// Katana dashboard: the few behaviours htmx attributes do not cover. No build step.
(function () {
  "use strict";

  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message; // text, never HTML
    box.className = kind;
    box.hidden = false;
  }

  function clearFlash(kind) {
    const box = document.getElementById("flash");
    if (box && box.className === kind) box.hidden = true;
  }

  function detail(xhr) {
    try {
      const body = JSON.parse(xhr.responseText);
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
    } catch (_) {
      // not JSON: fall back to the status line
    }
    return xhr.status + " " + xhr.statusText;
  }

  // An action the server refused (403 read-only, 409 wrong state, ...): say why.
  document.addEventListener("htmx:responseError", (event) => {
    flash(detail(event.detail.xhr), "error");
  });
  // The dashboard's own server did not answer (the broker banner covers the broker).
  document.addEventListener("htmx:sendError", () => {
    flash("The dashboard server does not answer; retrying while this tab is visible.", "offline");
  });
  document.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful) clearFlash("offline");
  });
  // Actions answer with HX-Trigger: {"katanaFlash": {"message": ...}}.
  document.addEventListener("katanaFlash", (event) => {
    flash(event.detail.message, "ok");
  });
  // The "select all" checkbox of a task table.
  document.addEventListener("change", (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.hasAttribute("data-select-all")) return;
    const table = box.closest("table");
    if (!table) return;
    for (const item of table.querySelectorAll("input[name=ids]")) item.checked = box.checked;
  });
})();
