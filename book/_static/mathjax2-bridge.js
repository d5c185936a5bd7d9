/*
 * Saved ipywidgets typeset their labels through the MathJax 2 call
 * `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`. The book loads MathJax 3, which has no
 * `Hub`, so every labelled widget would throw a TypeError and stay blank. This file gives
 * MathJax 3 that one call: each queued "Typeset" job becomes `MathJax.typesetPromise([element])`.
 *
 * Widgets render on the window's `load` event, after MathJax (a deferred script) has replaced
 * its configuration object by the MathJax 3 global; the bridge is installed just before that.
 */
(function () {
  function typesetLater(job) {
    const element = Array.isArray(job) ? job[2] : undefined;
    if (!element) return;
    window.MathJax.startup.promise
      .then(() => window.MathJax.typesetPromise([element]))
      .catch((error) => console.warn("MathJax could not typeset a widget label", error));
  }

  function install() {
    const mathjax = window.MathJax;
    if (!mathjax || !mathjax.version || mathjax.Hub) return;
    mathjax.Hub = { Queue: (...jobs) => jobs.forEach(typesetLater) };
  }

  document.addEventListener("DOMContentLoaded", install);
})();
