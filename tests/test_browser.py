"""The built book as a reader sees it: every page opened in headless Chromium, with no network.

Needs a built book (`make book`) and Debian's chromium and chromium-driver; marked `browser`, which
`make test` deselects (see pyproject.toml), so it never builds the book a second time. Run it with

    make browser-test                                   # builds _build/html first if it is missing
    .venv/bin/python -m pytest -m browser tests/test_browser.py

The pages are served from 127.0.0.1 by `python -m http.server`; Chromium sends every other request to
a closed port (a dead proxy), so anything a page would fetch from the internet fails, and the test
fails with it. For each page it checks: no console errors, no request leaving 127.0.0.1, math typeset
by MathJax (no raw `$$`), every image loaded, every internal link and anchor resolving; on chapter 1,
that the widget is drawn and its slider changes the picture without a kernel and that the animation
steps; on every chapter listed in _toc.yml, that it has 2 to 4 exercises, each with a solution that
starts hidden and opens. A screenshot of each page is saved under _build/screenshots/.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
BOOK = Path(os.environ.get("DIFFUSION_LESSONS_BOOK_HTML", REPO / "_build" / "html"))
SCREENSHOTS = BOOK.parent / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHAPTER_1 = "notebooks/01_forward_process.html"
PAGE_TIMEOUT = 60  # seconds for one page to load, typeset and draw its widgets on a loaded 2-core machine


def _chapters() -> list[str]:
    """The chapter pages in _toc.yml, relative to BOOK: its `- file: notebooks/...` lines (a commented-out one
    starts with `#` and is not a chapter yet). Read with a regular expression, so that collecting this file
    needs no YAML parser."""
    toc = (REPO / "_toc.yml").read_text()
    return [f"{file}.html" for file in re.findall(r"^\s*- file:\s*(notebooks/\S+?)\s*$", toc, flags=re.M)]


def _pages() -> list[str]:
    """Every HTML page of the book (not the copied sources, nor the static assets), relative to BOOK."""
    pages = (p.relative_to(BOOK).as_posix() for p in BOOK.rglob("*.html"))
    return sorted(page for page in pages if not page.startswith(("_static/", "_sources/", "_images/")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def book() -> Path:
    if not (BOOK / "index.html").is_file():
        pytest.fail(f"no built book at {BOOK}: run `make book` first (or `make browser-test`, which builds it "
                    "when it is missing)", pytrace=False)
    return BOOK


@pytest.fixture(scope="session")
def server(book):
    """Base URL of `python -m http.server` serving the book on 127.0.0.1 (stopped at the end)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(book)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(base + "index.html", timeout=1).close()
                break
            if proc.poll() is not None:
                pytest.fail(f"http.server exited with status {proc.returncode}", pytrace=False)
            time.sleep(0.1)
        else:
            pytest.fail(f"http.server did not answer on {base} within 10 s", pytrace=False)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through chromedriver; every non-loopback request goes to a closed port."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install -y chromium chromium-driver "
                    "(.ci/run does this)", pytrace=False)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="book-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1400",
                 f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{_free_port()}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.set_script_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, script: str, what: str, timeout: float = PAGE_TIMEOUT):
    """Poll a JavaScript expression until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if driver.execute_script(f"return !!({script});"):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{driver.current_url}: {what} (waited {timeout:.0f} s)", pytrace=False)
        time.sleep(0.2)


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


_STATUS: dict[str, str | None] = {}  # URL without fragment -> page text (None when it does not load)


def _fetch(url: str) -> str | None:
    if url not in _STATUS:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                _STATUS[url] = response.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            _STATUS[url] = None
    return _STATUS[url]


def _broken_links(driver, base: str) -> list[str]:
    """Internal links (same origin) whose page does not load or whose #anchor is not on it."""
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]'), a => a.href);")
    broken = []
    for href in sorted(set(hrefs)):
        if not href.startswith(base):
            continue  # external (papers, launch buttons): not fetched, the test runs offline
        url, _, anchor = href.partition("#")
        text = _fetch(url)
        if text is None:
            broken.append(f"{href} (does not load)")
        elif anchor and not url.endswith((".ipynb", ".md", ".py")):
            anchor = urllib.parse.unquote(anchor)
            if f'id="{anchor}"' not in text and f'name="{anchor}"' not in text:
                broken.append(f"{href} (no element with id {anchor!r})")
    return broken


_CHECK_PAGE = """
const text = el => {  // visible prose: everything but code, scripts and styles
  const clone = el.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, .highlight').forEach(n => n.remove());
  return clone.textContent;
};
const main = document.querySelector('main') || document.body;
const math = Array.from(document.querySelectorAll('.math'));
return {
  math: math.length,
  untypeset: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
  raw_dollars: (text(main).match(/\\$\\$/g) || []).length,
  raw_tex: (text(main).match(/\\\\(begin|frac|alpha|sigma)/g) || []).length,
  mathjax_errors: document.querySelectorAll('mjx-merror').length,
  images: Array.from(document.images)
    .map(i => ({src: i.currentSrc.slice(0, 80), ok: i.complete && i.naturalWidth > 0})),
  output_images: document.querySelectorAll('.cell_output img').length,
};
"""


def _load(driver, base: str, page: str) -> dict:
    """Open a page, wait until MathJax, widgets and images are done, and return what _CHECK_PAGE sees."""
    driver.get(base + page)
    _wait(driver, "document.readyState === 'complete'", "page did not finish loading")
    if driver.execute_script("return document.querySelectorAll('.math').length > 0;"):
        _wait(driver, "window.MathJax && MathJax.startup && MathJax.startup.document", "MathJax did not start")
        driver.execute_async_script("const done = arguments[arguments.length - 1];"
                                    "MathJax.startup.promise.then(() => done(true), e => done(String(e)));")
    views = "document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]').length"
    if driver.execute_script(f"return {views};"):  # the HTML manager draws each view into a .widget-subarea
        _wait(driver, f"document.querySelectorAll('.widget-subarea > .jupyter-widgets').length >= {views}",
              "the saved widget state was not drawn (ipywidgets HTML manager)")
    _wait(driver, "Array.from(document.images).every(i => i.complete)", "images did not finish loading", 30)
    return driver.execute_script(_CHECK_PAGE)


def _screenshot(driver, page: str, suffix: str = "") -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / (page.replace("/", "__").removesuffix(".html") + suffix + ".png")))


def test_every_page_renders_offline(book, server, browser):
    pages = _pages()
    assert "index.html" in pages and CHAPTER_1 in pages, f"expected the intro and chapter 1 among {pages}"
    problems = []
    browser.get_log("browser"), browser.get_log("performance")  # start from empty logs
    for page in pages:
        seen = _load(browser, server, page)
        _screenshot(browser, page)
        errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        offsite = [url for url in _requested_urls(browser)
                   if url.startswith(("http:", "https:", "ws:", "wss:", "ftp:")) and not url.startswith(server)]
        found = {
            "console errors": errors,
            "requests that left 127.0.0.1": offsite,
            "math not typeset by MathJax": seen["untypeset"],
            "images that did not load": [i["src"] for i in seen["images"] if not i["ok"]],
            "broken internal links": _broken_links(browser, server),
        }
        if seen["raw_dollars"] or seen["raw_tex"] or seen["mathjax_errors"]:
            found["raw TeX left in the text"] = [f"{seen['raw_dollars']} '$$', {seen['raw_tex']} TeX commands, "
                                                 f"{seen['mathjax_errors']} MathJax errors"]
        if page.startswith("notebooks/") and seen["output_images"] == 0:
            found["figures"] = ["a chapter page with no figure output"]
        problems += [f"{page}: {kind}: {items}" for kind, items in found.items() if items]
        print(f"{page}: {seen['math']} math elements, {len(seen['images'])} images, ok" if not any(found.values())
              else f"{page}: problems")
    assert not problems, "\n".join(problems)


def test_chapter_1_widget_and_animation_work_without_a_kernel(book, server, browser):
    _load(browser, server, CHAPTER_1)
    _wait(browser, "document.querySelector('.cell_output .jupyter-widgets .widget-slider')",
          "chapter 1's slider widget is not on the page")

    visible = """return Array.from(document.querySelectorAll('.jupyter-widgets img'))
        .filter(i => i.offsetParent !== null && i.naturalWidth > 0).map(i => i.src);"""
    readout = "return document.querySelector('.jupyter-widgets .widget-readout').textContent.trim();"
    before, label_before = browser.execute_script(visible), browser.execute_script(readout)
    assert len(before) == 1, f"the explorer should show exactly one picture; shows {len(before)}"
    handle = browser.find_element("css selector", ".jupyter-widgets .noUi-handle")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    from selenium.webdriver.common.keys import Keys

    handle.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    _wait(browser, f"document.querySelector('.jupyter-widgets .widget-readout').textContent.trim() "
                   f"!== {label_before!r}", "moving the slider did not change its value", 10)
    after = browser.execute_script(visible)
    assert len(after) == 1 and after != before, "moving the slider did not change the picture"
    _screenshot(browser, CHAPTER_1, "-widget")

    animation = browser.find_element("css selector", ".animation img")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", animation)
    frame = browser.execute_script("return arguments[0].src;", animation)
    browser.find_element("css selector", ".animation button[title='Next frame']").click()
    assert browser.execute_script("return arguments[0].src;", animation) != frame, "the animation did not step"
    assert browser.execute_script("return document.querySelectorAll('.animation .anim-buttons svg').length") == 9
    _screenshot(browser, CHAPTER_1, "-animation")
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_exercises_have_hidden_solutions_that_open(book, server, browser, chapter):
    """2 to 6 exercises at the end of the chapter, each with a solution that is hidden until the reader opens it."""
    assert (book / chapter).is_file(), f"{chapter} is listed in _toc.yml but was not built"
    _load(browser, server, chapter)
    exercises = browser.find_elements("css selector", "div.exercise")
    solutions = browser.find_elements("css selector", "div.solution.dropdown")
    assert 2 <= len(exercises) <= 6 and len(solutions) == len(exercises), (
        f"{chapter}: expected 2 to 6 exercises, each with a dropdown solution; found {len(exercises)} exercises "
        f"and {len(solutions)} solutions")
    checked = "div.solution.dropdown .cell_output"  # a solution's code ran in the book; its output is inside
    assert browser.execute_script(f"return document.querySelectorAll('{checked}').length") >= 1, (
        f"{chapter}: no solution shows the output of code run in the book")
    for i, solution in enumerate(solutions, 1):
        content = solution.find_element("css selector", ".admonition-title ~ *")  # what the dropdown hides
        assert not content.is_displayed(), f"{chapter}: solution {i} must start hidden"
        toggle = solution.find_element("css selector", ".admonition-title .toggle-button")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", toggle)
        toggle.click()
        deadline = time.monotonic() + 10
        while not content.is_displayed():
            if time.monotonic() > deadline:
                pytest.fail(f"{chapter}: solution {i} did not open (waited 10 s)", pytrace=False)
            time.sleep(0.2)
    time.sleep(1)  # let the fade-in finish before the screenshot
    _screenshot(browser, chapter, "-solutions")
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
