// Fleetyard's pages work without this script. With it: bars get their widths, times are shown
// in the viewer's own zone (and the zone is remembered for the server's next pages), and the
// dashboard's utilisation chart is drawn with uPlot (vendored).
(function () {
  "use strict";
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && document.cookie.indexOf("fy_tz=" + zone) < 0) {
    document.cookie = "fy_tz=" + zone + "; path=/ui; max-age=31536000; samesite=lax";
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".bar[data-pct]").forEach(function (bar) {
      bar.style.width = Math.max(2, Number(bar.dataset.pct)) + "px";
    });
    var data = document.getElementById("utilisation-data");
    var target = document.getElementById("utilisation-chart");
    if (!data || !target || typeof uPlot === "undefined") return;
    var chart = JSON.parse(data.textContent);
    if (!chart.days.length) return;
    var xs = chart.days.map(function (d) { return Date.parse(d + "T00:00:00Z") / 1000; });
    var colours = ["#0b57d0", "#b3261e", "#146c2e", "#8a5300"];
    var series = [{}].concat(chart.series.map(function (s, i) {
      return { label: s.arch, stroke: colours[i % colours.length], width: 2, value: function (u, v) { return v == null ? "" : v + " %"; } };
    }));
    var opts = {
      width: Math.max(320, target.clientWidth || 800), height: 240, series: series,
      axes: [{}, { values: function (u, vals) { return vals.map(function (v) { return v + " %"; }); } }],
      scales: { y: { range: [0, 100] } },
    };
    new uPlot(opts, [xs].concat(chart.series.map(function (s) { return s.share; })), target);
  });
})();
