// Sluice dashboard: live updates by Server-Sent Events. Progressive enhancement only: every page
// and every action works without this script (plain HTML and form posts).
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main || !main.dataset.live || !window.EventSource) {
    return;
  }
  var source = new EventSource("/sse?page=" + encodeURIComponent(main.dataset.live));
  source.addEventListener("main", function (event) {
    // The server renders the fragment with every value escaped, the same as the page itself.
    main.innerHTML = event.data;
    main.dataset.updates = String(Number(main.dataset.updates || "0") + 1);
  });
  source.addEventListener("error", function () {
    document.body.classList.add("offline");
  });
  source.addEventListener("open", function () {
    document.body.classList.remove("offline");
  });
})();
