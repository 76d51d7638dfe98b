// Live updates for the dashboard: when the server says an app, version, approval or policy of
// this namespace changed, fetch this page again and swap its <main> in. Pages work without it.
// At most one refresh every two seconds (the operator writes statuses in bursts), and only while
// the tab is visible: a hidden tab closes its stream (browsers allow few connections per host
// over HTTP/1.1) and catches up when shown again.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  if (!main || !main.dataset.live || !window.EventSource || !window.fetch) {
    return;
  }
  var MIN_INTERVAL = 2000;
  var source = null;
  var pending = null;
  var last = 0;
  var missed = false;

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
    last = Date.now();
    var focused = document.activeElement && document.activeElement.id;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          main.innerHTML = fresh.innerHTML;
          status.textContent = "Updated " + new Date().toLocaleTimeString();
          var again = focused && document.getElementById(focused);
          if (again) { again.focus(); }
        }
      })
      .catch(function () { status.textContent = "Could not refresh; reload the page."; });
  }

  function changed() {
    if (document.hidden) { missed = true; return; }
    if (!pending) {
      pending = setTimeout(refresh, Math.max(300, last + MIN_INTERVAL - Date.now()));
    }
  }

  function open() {
    if (source) { return; }
    source = new EventSource(main.dataset.live);
    source.addEventListener("change", changed);
    source.onopen = function () { main.dataset.liveConnected = "true"; };
  }

  function close() {
    if (source) { source.close(); source = null; }
    main.dataset.liveConnected = "false";
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      close();
      missed = true;
    } else {
      open();
      if (missed) { missed = false; changed(); }
    }
  });
  if (!document.hidden) { open(); }
})();
