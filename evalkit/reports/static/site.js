// evalkit report: sortable tables and the sample browser's filters and pages.
// Plain JS, no dependencies, no network: the site works from file:// and any static host.
// Rows are rendered by the server side (escaped by Jinja2); this file only reorders them and
// toggles their `hidden` attribute, so no model text is ever parsed as HTML here.
(function () {
  "use strict";

  // -- sortable tables: click (or Enter on) a header; numbers by data-sort, empty cells last --
  function sortKey(cell) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    raw = raw.trim();
    var num = Number(raw);
    return { empty: raw === "", isNum: raw !== "" && !isNaN(num), num: num, text: raw };
  }

  function compareKeys(a, b, dir) {
    if (a.empty !== b.empty) return a.empty ? 1 : -1;
    var c = a.isNum && b.isNum ? a.num - b.num : a.text.localeCompare(b.text);
    return dir === "ascending" ? c : -c;
  }

  function sortTable(table, th, index) {
    var numeric = th.getAttribute("data-type") === "number";
    var current = th.getAttribute("aria-sort");
    var dir;
    if (current === "descending") dir = "ascending";
    else if (current === "ascending") dir = "descending";
    else dir = numeric ? "descending" : "ascending";
    table.querySelectorAll("thead th").forEach(function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) {
      return { row: row, key: sortKey(row.cells[index]), i: i };
    });
    keyed.sort(function (a, b) {
      return compareKeys(a.key, b.key, dir) || a.i - b.i;
    });
    keyed.forEach(function (k) {
      body.appendChild(k.row);
    });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, index) {
      th.tabIndex = 0;
      th.title = "Sort by this column";
      th.addEventListener("click", function () {
        sortTable(table, th, index);
      });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          sortTable(table, th, index);
        }
      });
    });
  });

  // -- sample browser: filter by verdict, metadata and id; show one page at a time --------
  var browser = document.getElementById("sample-browser");
  if (!browser) return;
  var rows = Array.prototype.slice.call(browser.querySelectorAll(".sample"));
  var controls = Array.prototype.slice.call(browser.querySelectorAll("[data-filter]"));
  var search = browser.querySelector("#sample-search");
  var status = browser.querySelector("#sample-status");
  var prev = browser.querySelector("#page-prev");
  var next = browser.querySelector("#page-next");
  var pageSize = Number(browser.getAttribute("data-page-size")) || 100;
  var page = 0;
  var matching = rows;

  function matches(row) {
    for (var i = 0; i < controls.length; i++) {
      var want = controls[i].value;
      if (want && row.getAttribute(controls[i].getAttribute("data-filter")) !== want) {
        return false;
      }
    }
    var q = search ? search.value.trim().toLowerCase() : "";
    return !q || row.getAttribute("data-id").toLowerCase().indexOf(q) !== -1;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(matching.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * pageSize;
    var end = Math.min(start + pageSize, matching.length);
    rows.forEach(function (row) {
      row.hidden = true;
    });
    for (var i = start; i < end; i++) matching[i].hidden = false;
    status.textContent =
      (matching.length ? "Showing " + (start + 1) + "–" + end + " of " : "Showing 0 of ") +
      matching.length + " matching samples (" + rows.length + " in this run)" +
      (pages > 1 ? ", page " + (page + 1) + " of " + pages : "");
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  function refilter() {
    matching = rows.filter(matches);
    page = 0;
    render();
  }

  controls.forEach(function (c) {
    c.addEventListener("change", refilter);
  });
  if (search) search.addEventListener("input", refilter);
  prev.addEventListener("click", function () {
    page -= 1;
    render();
  });
  next.addEventListener("click", function () {
    page += 1;
    render();
  });
  browser.classList.add("scripted");
  refilter();
})();
