// Shows the state of the live connection, so an operator knows when the page may be stale.
(function () {
  function setState(state, text) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }
  document.addEventListener("htmx:wsOpen", function () { setState("open", "Live"); });
  document.addEventListener("htmx:wsClose", function () { setState("closed", "Live: disconnected, reconnecting"); });
  document.addEventListener("htmx:wsError", function () { setState("closed", "Live: connection error, retrying"); });
})();
