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
  document.addEventListener("htmx:wsOpen", function () { setState("open", "Live"); });
  document.addEventListener("htmx:wsClose", function () { setState("closed", "Live: disconnected, reconnecting"); });
  document.addEventListener("htmx:wsError", function () { setState("closed", "Live: connection error, retrying"); });
})();
