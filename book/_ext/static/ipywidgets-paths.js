/* Loaded after RequireJS and before ipywidgets' HTML manager (embed-amd.js), on pages with widgets.
 * The manager's modules are named "@jupyter-widgets/..." and each looks for its fonts (Font Awesome,
 * drawn by the Play widget's buttons) next to the URL RequireJS gives its name; by default that is
 * beside the page, where there is nothing. Map the names to the folder holding embed-amd.js. */
(function () {
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  require.config({
    paths: {
      "@jupyter-widgets": here + "html-manager",
      "@jupyter-widgets/html-manager/dist": here + "html-manager"
    }
  });
})();
