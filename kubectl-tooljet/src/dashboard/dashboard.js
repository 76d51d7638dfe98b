// Live updates for the dashboard: when the server says an app, version, approval or policy of
// this namespace changed, fetch this page again and swap its <main> in. Pages work without it.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  if (!main || !main.dataset.live || !window.EventSource || !window.fetch) {
    return;
  }
  var pending = null;
  function busy() {
    // Never replace what someone is typing.
    var a = document.activeElement;
    if (a && main.contains(a) && (a.tagName === "INPUT" || a.tagName === "TEXTAREA")) {
      return true;
    }
    var inputs = main.querySelectorAll("input[name=comment]");
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].value) { return true; }
    }
    return false;
  }
  function refresh() {
    pending = null;
    if (busy()) {
      status.textContent = "Something changed; reload to see it.";
      return;
    }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
          status.textContent = "Updated " + new Date().toLocaleTimeString();
        }
      })
      .catch(function () { status.textContent = "Could not refresh; reload the page."; });
  }
  var source = new EventSource(main.dataset.live);
  source.addEventListener("change", function () {
    if (!pending) { pending = setTimeout(refresh, 300); }
  });
  source.onopen = function () { main.dataset.liveConnected = "true"; };
})();
