"""Sphinx extension: the built book serves its own JavaScript, so its pages work with no network.

* When the builder starts: every script that myst-nb adds to pages with widgets (`nb_ipywidgets_js`
  in `_config.yml`) and MathJax (`mathjax_path`, set by sphinx-mathjax-offline) must be a local path,
  `.vendor/` must hold the pinned copies that `book/vendor_assets.py` fetches (`make vendor`), and
  every `vendored/...` script must exist there or in `book/_ext/static/` (our two small adapters for
  the widget manager). Otherwise the build stops here, saying which and how to fix it.
* When the build has finished: `.vendor/` and `book/_ext/static/` are copied to `_static/vendored/`
  (not `_static/vendor/`, which pydata-sphinx-theme uses for its own files).
* In every page's HTML outputs (raw HTML from notebook cells and Markdown): a `<link>`, `<script>`,
  `<img>` or `<iframe>` that would fetch from the network is a warning (an error under `-W`). The
  usual culprit is matplotlib's `anim.to_jshtml()`, which links Font Awesome from a CDN; display
  animations with `IPython.display.HTML(dl.animation_html(anim))` instead.
* When the build has finished: a `favicon.ico` is drawn at the root of the build. The pages name
  `book/favicon.svg` as their icon, but the root `index.html` is Jupyter Book's bare redirect page,
  with no icon link, so a browser asks the server for `/favicon.ico` (a 404 in its console otherwise).
* On every page: scripts listed twice are listed once. (With Sphinx 7.4, sphinx-thebe's and
  sphinx-togglebutton's inline settings are emitted twice; the second `const THEBE_JS_URL` is a
  SyntaxError in the browser console.)

The vendored files are kept out of the book's `_static/` folder on purpose: Jupyter Book adds every
`.js` file under `_static/` to every page, so RequireJS and the widget manager would load on all
pages, and twice on pages with widgets (myst-nb adds them there too).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.util import logging
from sphinx.util.fileutil import copy_asset

logger = logging.getLogger(__name__)
REMOTE = re.compile(r"""<(link|script|img|iframe)\b[^>]*?\b(?:href|src)\s*=\s*["']((?:https?:)?//[^"']+)""", re.I)

BOOK = Path(__file__).resolve().parent.parent
ADAPTERS = Path(__file__).resolve().parent / "static"


def _vendor_assets():
    spec = importlib.util.spec_from_file_location("vendor_assets", BOOK / "vendor_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_url(path: str) -> bool:
    return "://" in path or path.startswith("//")


def check_local_assets(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    remote = [path for path in app.config.nb_ipywidgets_js if _is_url(path)]
    if _is_url(app.config.mathjax_path or ""):
        remote.append(app.config.mathjax_path)
    if remote:
        raise ConfigError(
            "offline_assets: the book must render without network, but these scripts would load from it: "
            + ", ".join(remote) + ". Point nb_ipywidgets_js (in _config.yml) at the vendored copies "
            "(vendored/...) and keep sphinx-mathjax-offline in sphinx.extra_extensions."
        )
    vendor = _vendor_assets()
    problems = vendor.missing()
    for path in app.config.nb_ipywidgets_js:
        name = path.removeprefix("vendored/")
        if name == path or not ((vendor.VENDOR / name).is_file() or (ADAPTERS / name).is_file()):
            problems.append(f"nb_ipywidgets_js names {path}, which is in neither .vendor/ nor book/_ext/static/")
    if problems:
        raise ConfigError("offline_assets: the vendored JavaScript is not ready: " + "; ".join(problems)
                          + ". Run `make vendor` (python3 book/vendor_assets.py) once; it needs npm.")


def warn_remote_outputs(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for node in doctree.findall(nodes.raw):
        if "html" not in node.get("format", "").split():
            continue
        for tag, url in REMOTE.findall(node.astext()):
            hint = (" (matplotlib's to_jshtml(): show animations with IPython.display.HTML(dl.animation_html(anim)))"
                    if "font-awesome" in url else "")
            logger.warning(f"offline_assets: an HTML output loads <{tag}> {url} from the network; the book must "
                           f"render offline{hint}", location=node, type="offline_assets", subtype="remote")


def drop_duplicate_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    scripts, seen = context.get("script_files"), set()
    if not isinstance(scripts, list):
        return
    unique = []
    for script in scripts:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: the builder's own list, which later handlers may still extend


def copy_vendored(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        target = str(Path(app.outdir) / "_static" / "vendored")
        copy_asset(str(_vendor_assets().VENDOR), target)
        copy_asset(str(ADAPTERS), target)


def write_root_favicon(app: Sphinx, exception: Exception | None) -> None:
    """The book's icon, book/favicon.svg, redrawn as `favicon.ico` with Pillow (which matplotlib
    brings): grey noise on the left carried to two modes of data on the right."""
    if exception is not None or app.builder.format != "html":
        return
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, 31, 31), radius=6, fill="#1b2a41")
    dots = {"#9a9a9a": [(5, 7), (8, 19), (4, 25), (10, 11), (7, 14), (11, 27)],
            "#ff7f0e": [(22, 10), (26, 8), (24, 13)],
            "#1f77b4": [(21, 23), (25, 21), (26, 25)]}
    for colour, centres in dots.items():
        r = 1.3 if colour == "#9a9a9a" else 2.0
        for x, y in centres:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    image.save(Path(app.outdir) / "favicon.ico", sizes=[(32, 32), (16, 16)])


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_local_assets)
    app.connect("doctree-resolved", warn_remote_outputs)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)  # after the handlers that add scripts
    app.connect("build-finished", copy_vendored)
    app.connect("build-finished", write_root_favicon)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
