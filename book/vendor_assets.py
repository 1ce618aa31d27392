#!/usr/bin/env python3
"""Fetch the JavaScript that the built book serves itself, so its pages need no network.

The static pages of chapters with widgets load RequireJS and ipywidgets' HTML manager (which draws the
saved widget state). Jupyter Book would take them from CDNs; we vendor pinned versions instead, from
the npm registry through `npm pack` (one tarball each, integrity-checked, no dependency tree), into
`.vendor/` (git-ignored). `book/_ext/offline_assets.py` copies them into `_build/html/_static/vendored/`
at build time, and `_config.yml` points `nb_ipywidgets_js` at those copies. MathJax is served locally
by the `sphinx-mathjax-offline` package (PyPI), not from here. Standard library only:

    python3 book/vendor_assets.py           # fetch what is missing (needs npm and the npm registry)
    python3 book/vendor_assets.py --check   # exit 1, naming what is missing, without fetching

Run by `make vendor` (and so by `make book`). The book build itself never fetches anything.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / ".vendor"
MANIFEST = VENDOR / "MANIFEST.json"

# package@version, its registry integrity (npm view PACKAGE@VERSION dist.integrity), and what to take
# from its tarball: {path inside the tarball: path under .vendor/}. A path ending in "/" takes a folder.
PINNED = [
    {
        "package": "requirejs",
        "version": "2.3.8",
        "integrity": "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        "license": "MIT",
        "files": {"package/require.js": "require.js"},
    },
    {
        # html-manager 1.0.x draws ipywidgets 8 state (@jupyter-widgets/controls 2.0.0). embed-amd.js
        # finds its Font Awesome fonts (used by the Play widget's buttons) next to itself.
        "package": "@jupyter-widgets/html-manager",
        "version": "1.0.15",
        "integrity": "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "license": "BSD-3-Clause",
        "files": {"package/dist/": "html-manager/", "package/package.json": "html-manager/package.json"},
    },
]
SKIP_SUFFIXES = (".map", "/embed.js", "/libembed-amd.js")  # builds the pages do not load


def wanted() -> dict:
    """What MANIFEST.json must say for .vendor/ to be complete: {package: version}."""
    return {pin["package"]: pin["version"] for pin in PINNED}


def missing() -> list[str]:
    """Why .vendor/ is not usable as it is; empty when it matches PINNED."""
    if not MANIFEST.is_file():
        return [f"{MANIFEST.relative_to(REPO)} does not exist"]
    have = json.loads(MANIFEST.read_text())
    problems = [f"{name} {version} (have {have.get(name, 'none')})" for name, version in wanted().items()
                if have.get(name) != version]
    for pin in PINNED:
        for dest in pin["files"].values():
            if not (VENDOR / dest).exists():
                problems.append(f".vendor/{dest} is missing")
    return problems


def _check_integrity(tarball: Path, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise SystemExit(f"vendor_assets: {tarball.name} does not match its pinned integrity {integrity}")


def _extract(tarball: Path, files: dict) -> None:
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name.endswith(SKIP_SUFFIXES):
                continue
            for src, dest in files.items():
                if member.name == src or (src.endswith("/") and member.name.startswith(src)):
                    target = VENDOR / (dest + member.name[len(src):] if src.endswith("/") else dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as data, open(target, "wb") as out:
                        shutil.copyfileobj(data, out)


def fetch() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("vendor_assets: npm is needed to fetch the book's JavaScript (apt-get install npm)")
    shutil.rmtree(VENDOR, ignore_errors=True)
    VENDOR.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{pin['package']}@{pin['version']}" for pin in PINNED]
        result = subprocess.run([npm, "pack", "--json", "--pack-destination", tmp, *specs],
                                check=True, capture_output=True, text=True, cwd=tmp)
        packed = {entry["name"]: Path(tmp) / entry["filename"] for entry in json.loads(result.stdout)}
        for pin in PINNED:
            _check_integrity(packed[pin["package"]], pin["integrity"])
            _extract(packed[pin["package"]], pin["files"])
    MANIFEST.write_text(json.dumps(wanted(), indent=1) + "\n")


def main(argv: list[str]) -> int:
    problems = missing()
    if "--check" in argv:
        for problem in problems:
            print(f"vendor_assets: {problem}; run `make vendor`", file=sys.stderr)
        return 1 if problems else 0
    if problems:
        fetch()
    print(f"vendor_assets: {', '.join(f'{k} {v}' for k, v in wanted().items())} in {VENDOR.relative_to(REPO)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
