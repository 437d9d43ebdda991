// Shows the state of the live connection, so an operator knows when the page may be stale.
(function () {
  // Reconnect quickly after a drop: at most 5 s apart, with jitter so a restarted server is
  // not hit by every page at once.
  htmx.config.wsReconnectDelay = function (retryCount) {
    var ceiling = Math.min(500 * Math.pow(2, retryCount), 5000);
    return ceiling / 2 + Math.random() * ceiling / 2;
  };
  function setState(state, text) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }
  // Open, but not yet in sync: the server's catch-up ends with the "open" state itself.
  document.addEventListener("htmx:wsOpen", function () { setState("syncing", "Live: catching up"); });
  // The ws extension reconnects after abnormal closes only; after a normal one, say to reload.
  var RECONNECTS = [1006, 1011, 1012, 1013];
  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail && event.detail.event ? event.detail.event.code : 1006;
    if (RECONNECTS.indexOf(code) === -1) {
      setState("closed", "Live: disconnected; reload the page");
    } else {
      setState("closed", "Live: disconnected, reconnecting");
    }
  });
  document.addEventListener("htmx:wsError", function () { setState("closed", "Live: connection error, retrying"); });
})();

// The queue and the review page: SLA countdowns, tier counts after live changes, the
// snapshot search, and keys for working without the mouse.
(function () {
  function left(due) {
    var seconds = Math.round((new Date(due) - new Date()) / 1000);
    if (isNaN(seconds)) return null;
    if (seconds <= 0) return { text: "overdue", overdue: true };
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return { text: m + ":" + (s < 10 ? "0" : "") + s + " left", overdue: false };
  }
  function tick() {
    document.querySelectorAll("time.countdown").forEach(function (el) {
      var state = left(el.getAttribute("datetime"));
      if (!state) return;
      el.textContent = state.text;
      el.classList.toggle("overdue", state.overdue);
    });
  }
  // Live rows arrive at the end of their tier: put them in SLA order, and keep a truncated
  // list to the number of rows it was given.
  function reorder(list) {
    var rows = Array.prototype.slice.call(list.querySelectorAll(":scope > li.item"));
    rows.sort(function (a, b) { return Number(a.dataset.due) - Number(b.dataset.due); });
    rows.forEach(function (row) { list.appendChild(row); });
    var keep = parseInt(list.dataset.shown || "0", 10);
    if ("truncated" in list.dataset && keep) rows.slice(keep).forEach(function (row) { row.remove(); });
  }
  function recount() {
    document.querySelectorAll("ol.queue[data-tier]").forEach(function (list) {
      reorder(list);
      var tier = list.dataset.tier, n = list.querySelectorAll("li.item").length;
      var count = document.querySelector('[data-tier-count="' + tier + '"]');
      var empty = document.querySelector('[data-empty-for="' + tier + '"]');
      // A truncated list shows only the most urgent rows: its count comes from the server.
      if (count && !("truncated" in list.dataset)) count.textContent = n;
      if (empty) empty.hidden = n > 0;
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", function () { tick(); recount(); });
  document.addEventListener("htmx:wsAfterMessage", function () { tick(); recount(); });
  document.addEventListener("htmx:afterSwap", function () { tick(); recount(); });

  document.addEventListener("input", function (event) {
    var box = event.target;
    if (!box.dataset || !box.dataset.filter) return;
    var needle = box.value.toLowerCase();
    document.querySelectorAll(box.dataset.filter + " > li").forEach(function (li) {
      li.hidden = needle !== "" && li.textContent.toLowerCase().indexOf(needle) === -1;
    });
  });

  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var rows = Array.prototype.slice.call(document.querySelectorAll("ol.queue a.open"));
    if (rows.length && (event.key === "j" || event.key === "k")) {
      var at = rows.indexOf(document.activeElement);
      var next = event.key === "j" ? Math.min(at + 1, rows.length - 1) : Math.max(at - 1, 0);
      rows[at === -1 ? 0 : next].focus();
      event.preventDefault();
      return;
    }
    if (event.key === "q" && document.querySelector("#decision")) {
      window.location.href = "/queue/";
      return;
    }
    var target = document.querySelector('#decision [data-key="' + event.key + '"]');
    if (!target) return;
    event.preventDefault();
    if (target.tagName === "TEXTAREA") {
      var details = target.closest("details");
      if (details) details.open = true;
      target.focus();
    } else {
      target.click();
    }
  });
  // In the reason box, Ctrl+Enter (Cmd+Enter) rejects; a plain Enter is a new line, so a note
  // written to go with an approval never rejects by accident.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    if (event.target.id !== "d-reason") return;
    var reject = document.querySelector('#decision button[value="reject"]');
    if (reject) { event.preventDefault(); reject.click(); }
  });
})();
