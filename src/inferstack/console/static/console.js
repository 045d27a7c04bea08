// The console's one script: live catalog search and the Health page's refresh. Every page
// works without it (search also runs on the server; Health can be reloaded by hand).
(function () {
  "use strict";

  function liveSearch(box) {
    var rows = Array.prototype.slice.call(document.querySelectorAll("tr.feature"));
    var groups = Array.prototype.slice.call(document.querySelectorAll("article.group"));
    var counter = document.getElementById("search-count");
    var total = rows.length;
    function apply() {
      var words = box.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (row) {
        var text = row.getAttribute("data-search") || "";
        var match = words.every(function (word) { return text.indexOf(word) >= 0; });
        row.hidden = !match;
        if (match) { shown += 1; }
      });
      groups.forEach(function (group) {
        group.hidden = group.querySelector("tr.feature:not([hidden])") === null;
      });
      if (counter) {
        counter.textContent = shown + " of " + total + " features" +
          (words.length ? " match \u201c" + box.value.trim() + "\u201d" : "");
      }
    }
    box.addEventListener("input", apply);
  }

  function refresh(panel) {
    var url = panel.getAttribute("data-refresh");
    var every = parseInt(panel.getAttribute("data-every") || "3000", 10);
    function load() {
      fetch(url, { headers: { "Accept": "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) { panel.innerHTML = html; } })
        .catch(function () { /* the server restarting: keep the last numbers */ })
        .then(function () { window.setTimeout(load, every); });
    }
    window.setTimeout(load, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("search");
    if (box) { liveSearch(box); }
    var panel = document.getElementById("health-panel");
    if (panel) { refresh(panel); }
  });
})();
