/*
 * The ipywidgets HTML manager finds its icon fonts next to the AMD module it was loaded as. Its
 * modules are defined by name inside embed-amd.js, so RequireJS would place them beside the page
 * (`<page folder>/@jupyter-widgets/html-manager/dist/`), where nothing is. Point that module
 * path at the vendored copy instead, which `scripts/fetch_offline_assets.sh` fills with the
 * fonts. Loaded after require.js and before embed-amd.js, only when the vendored assets exist.
 */
(function () {
  const folder = new URL("offline/html-manager", document.currentScript.src).href;
  window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": folder } });
})();
