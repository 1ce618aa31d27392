/* Loaded with `defer` after MathJax, on pages with widgets (so it runs once MathJax 3 is there and
 * before the widgets are drawn, at window load). ipywidgets' HTML manager typesets widget labels with
 * MathJax 2's call, MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); MathJax 3 has no Hub and the
 * call would throw. Answer it with MathJax 3's typesetPromise, once MathJax has started. */
(function () {
  if (!window.MathJax || window.MathJax.Hub) {
    return;
  }
  window.MathJax.Hub = {
    Queue: function () {
      Array.prototype.forEach.call(arguments, function (job) {
        if (!Array.isArray(job) || job[0] !== "Typeset") {
          return;
        }
        var started = (MathJax.startup && MathJax.startup.promise) || Promise.resolve();
        started.then(function () {
          return MathJax.typesetPromise ? MathJax.typesetPromise(job[2] ? [job[2]] : undefined) : null;
        });
      });
    }
  };
})();
