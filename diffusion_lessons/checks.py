"""The book's numerical checks, by ID: what each asserts, against what, and where that comes from.

A check ID (TK-1, SDE-3, WV-2, ...) names one claim with a known answer. A test that implements it says
so in its docstring ("Check WV-2: ..."), and a chapter cell that asserts it prints the ID. `CHECKS` is
the registry: one line per ID, sorted, so that adding one is a one-line edit:

    "WV-2": Check("statement", "what it is compared against", "source: bib key(s) or code of record"),

The appendix page "Checks" (book/checks.md) is generated from it, with the places where each ID is
used, found by scanning the chapters, the tests, the package and the book's pages:

    python -m diffusion_lessons.checks --write book/checks.md    # write the page
    python -m diffusion_lessons.checks --check book/checks.md    # exit 1 if it is stale or an ID has no entry

Statements use $...$ for mathematics (the page is MyST markdown); a source is a key of
book/references.bib (cited on the page) or plain words for a code of record or a derivation.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import sys
from pathlib import Path as FilePath

__all__ = ["CHECKS", "PREFIXES", "Check", "main", "render_page", "usages"]


@dataclasses.dataclass(frozen=True)
class Check:
    """statement: what is asserted; reference: what it is compared against (the published value where a
    paper gives one); source: bib keys (comma-separated) or words naming the code of record / derivation."""

    statement: str
    reference: str
    source: str


# The families of IDs; a new family adds its prefix here (the scan only recognises these).
PREFIXES = ("BG", "DL", "DPM", "EDM", "EV", "FM", "FS", "GD", "GF", "MRS", "PR", "SDE", "SI", "TK", "WGF", "WV")

# fmt: off
CHECKS = {
    "BG-1": Check("the mean-reverting (IR-SDE) process with the code's time normalisation: $\\alpha_T=\\epsilon$ exactly and the terminal law $\\mathcal N(\\mu+\\epsilon(x_0-\\mu),\\lambda^2(1-\\epsilon^2))$; MRS is DPM-Solver++ on $y=x-\\mu$, exact on a point mass, orders 1 and 2 measured", "the schedule constants to 1e-12; DPM-Solver++ on $y$ and the exact marginal to 1e-12; the exact PF-ODE map by step-doubling ratios", "luo2023irsde, li2025mrs"),
    "BG-2": Check("SGMSE's OUVE process: the closed-form standard deviation solves the variance ODE; starting the PF-ODE at $y+\\mathrm{std}(1)z$ leaves a bias that the closed form predicts, and the predictor–corrector sampler mostly removes it", "the Riccati ODE $\\dot P=-2\\theta P+g^2$ to 1e-10; the exact Gaussian end moments of the PF-ODE, to 1e-10", "richter2023sgmse"),
    "BG-3": Check("the Dale–Langevin log-space sampler with the exact score keeps the log-mean exact and its log-variance error is first order in the step; it never leaves $(0,\\infty)$", "the exact linear recursion of the log-moments, to 1e-10; sign changes of an additive step", "shetty2025dale"),
    "DL-1": Check("geometric Brownian motion has log-normal marginals with mean $x_0e^{\\mu t}$ and variance $x_0^2e^{2\\mu t}(e^{\\sigma^2t}-1)$", "Euler–Maruyama paths: mean within 1 %, variance within 2 %", "shetty2025dale"),
    "DL-2": Check("the Lamperti transform $y=\\log x$ turns GBM into Brownian motion with drift $\\mu-\\sigma^2/2$, and the score transforms with its Jacobian", "the log-space density and score at fixed points, to 1e-12", "shetty2025dale"),
    "DL-3": Check("the multiplicative (log-space) update preserves the sign of positive data; an additive Euler step crosses zero", "0 sign changes for the log-space update; the additive step's crossing probability $\\Phi(\\cdot)$", "shetty2025dale"),
    "DPM-1": Check("DPM-Solver-1 and DPM-Solver++-1 converge at order 1, DPM-Solver-2 and DPM-Solver++(2M) at order 2, on a VP path with Gaussian data and exact models, steps uniform in $\\lambda$", "error ratios under step doubling against the closed-form PF-ODE solution: in [1.7, 2.3] for order 1 and [3.3, 5.0] for order 2", "lu2022dpmsolver, lu2022dpmsolverpp"),
    "DPM-2": Check("DPM-Solver-1 (noise prediction), DPM-Solver++-1 (data prediction) and DDIM take the same step", "each other, to 1e-12 on one grid", "lu2022dpmsolverpp, song2021ddim"),
    "DPM-3": Check("for a point mass the data prediction is constant in $\\lambda$, so three DPM-Solver++ steps are exact", "the closed-form end point $\\alpha_{t_0}x^\\star+\\frac{\\sigma_{t_0}}{\\sigma_T}(x_T-\\alpha_Tx^\\star)$, to 1e-12", "lu2022dpmsolverpp"),
    "DPM-4": Check("DPM-Solver++(2M) with data prediction beats the same multistep solver with noise prediction at few steps", "the closed-form PF-ODE end point of Gaussian data: smaller RMS error by a factor above 3 at 5 steps", "lu2022dpmsolverpp"),
    "DPM-5": Check("EDM's sampler on $\\sigma/\\alpha$ is the VP sampler in scaled coordinates: the Gaussian closed forms coincide", "each other, to 1e-10", "karras2022edm"),
    "EDM-1": Check("EDM's preconditioning gives the network unit-variance inputs and targets at every noise level", "variances within 0.01 and the constants $c_{\\rm skip},c_{\\rm out},c_{\\rm in},c_{\\rm noise}$ to 1e-6", "karras2022edm"),
    "EDM-2": Check("the Karras $\\rho=7$ noise schedule with 18 steps from $\\sigma=80$ to 0.002", "the schedule of the code of record, to 1e-3 relative", "karras2022edm"),
    "EDM-3": Check("Heun (EDM Alg. 1, Euler on the last step) converges at order 2 and Euler at order 1 on the EDM path", "the closed-form PF-ODE solution for Gaussian data: error ratios under step doubling", "karras2022edm"),
    "FM-1": Check("consistency models: the boundary condition holds exactly, and the exact flow map's residual under the distillation target falls at order 8 / 4 / 2 per step doubling for a Heun teacher / an Euler teacher / consistency training", "$c_{\\rm skip},c_{\\rm out}$ of the code of record; the exact Gaussian flow map, ratio windows [7, 9.5], [3.6, 4.4], [1.8, 2.2]", "song2023consistency"),
    "FM-2": Check("shortcut models: the exact map satisfies the self-consistency target, tends to the velocity at first order in the step $d$, and one step of size 1 samples the data", "the exact Gaussian flow map: residual below 1e-12, ratios in [1.9, 2.25], the data's moments", "frans2025shortcut"),
    "FM-3": Check("MeanFlow: the target built with the JVP at the exact average velocity equals it, two steps equal one (semigroup), and one step samples the data", "the exact Gaussian flow map, to 1e-8 and 1e-10; the data's moments", "geng2025meanflow"),
    "FS-1": Check("DDIM's few-step samples of Gaussian data have too little variance: the exact affine recursion of the terminal variance", "the exact moment recursion, to 1e-10; Monte Carlo within 4 standard errors", "song2021ddim"),
    "FS-2": Check("EDM's stochastic sampler (churn) has exact terminal moments for Gaussian data; the deterministic variance tends to the data's and $S_{\\rm noise}>1$ inflates it", "the exact moment recursion of the affine Heun maps, to 1e-10", "karras2022edm"),
    "FS-3": Check("EVODiff (order 2, log-SNR grid) against DPM-Solver++(2M) on a Gaussian oracle, and its guarded final step on a point mass", "a float64 re-implementation of the authors' sampler and the closed-form PF-ODE map", "li2025evodiff"),
    "FS-4": Check("Time-Shift's selection rule picks the grid time whose noise level matches the estimated variance within its window", "the integers of the code of record's convention", "li2024timeshift"),
    "FS-5": Check("Denoising MCMC: the fixed-step Langevin chain's stationary variance, exact Gibbs over noise levels, and the bias of keeping the smallest noise level", "the closed form $c/(1-\\eta/(4c))$ to 1e-10; uniform level deciles within 5 standard errors", "kim2023dmcmc"),
    "GD-1": Check("classifier-free guidance is exact when the conditionals share a covariance, and otherwise the PF-ODE, the reverse SDE and the tilted law $p(x\\mid c)^\\gamma p(x)^{1-\\gamma}$ give three different variances", "the score of the shifted Gaussian to 1e-12; the scalar variance ODE solved by DOP853", "ho2021cfg"),
    "GD-2": Check("classifier guidance with the exact noisy classifier turns the score into the class's component score", "the component score to 1e-12; finite differences of $\\log p_t+\\gamma\\log w_k$ to 1e-7", "dhariwal2021beat"),
    "GD-3": Check("replacement inpainting in the score-SDE code order samples the wrong conditional when coordinates correlate", "the exact Gaussian recursion of its moments, to 1e-8, against the exact conditional", "song2021sde"),
    "GD-4": Check("DPS with first-order Tweedie is biased; the exact noisy-likelihood score (second-order covariance) samples the posterior", "the exact Gaussian posterior: within 4 standard errors, and a first-order mean bias above 0.1", "chung2023dps, rout2024stsl"),
    "GD-5": Check("second-order Tweedie: $\\frac{\\sigma^2}{\\alpha^2}(I+\\sigma^2\\nabla^2\\log p_t)$ is the posterior covariance; the score-difference trace estimator's bias depends on its probe size", "the exact mixture posterior covariance to 1e-10; Gauss–Hermite quadrature to 1e-6", "efron2011tweedie, rout2024stsl"),
    "GD-6": Check("Resfusion: the linear-pro schedule and its acceleration point, the residual-noise start, and its few-step sampler's moments", "the schedule of the code of record to 1e-6; the DDPM posterior in shifted coordinates to 1e-12; exact moments", "shi2024resfusion"),
    "GF-1": Check("the gauge term is divergence-free: $\\nabla\\cdot(A\\nabla\\log p_t)=\\mathrm{tr}(AH)=0$ for antisymmetric $A$", "0, to 1e-12 at 200 points of GMM2 under VP", "horvat2024gauge"),
    "GF-2": Check("the non-conservative field $(I+A)\\nabla\\log p_t$ samples the same law as the score through the PF-ODE, though each sample lands elsewhere", "the exact score's samples from the same starts: moments within 0.05, mean displacement above 0.5", "horvat2024gauge"),
    "GF-3": Check("the non-conservative field $(I+A)\\nabla\\log p_t$ gives the exact log-likelihood through the augmented PF-ODE, from other latents", "the analytic $\\log p_\\epsilon$ of GMM2, to 1e-5", "horvat2024gauge"),
    "GF-4": Check("a conservative but wrong field, $c\\nabla\\log p_t$ with $c\\ne1$, samples the wrong law", "GMM2's exact moments: covariance entries move by more than 0.5", "horvat2024gauge"),
    "GF-5": Check("a rotation that does not respect the density, $Ax$, changes the law; its weighted divergence $p^{-1}\\nabla\\cdot(pAx)$ is zero only for isotropic $p$", "the exact moments of GMM2; the divergence of $\\mathcal N(0,I)$ (zero) and of an anisotropic Gaussian (not)", "horvat2024gauge"),
    "GF-6": Check("circulation around a loop and Jacobian asymmetry vanish for a gradient field and not for $(I+A)\\nabla\\log p_t$", "0 for the exact score (to 1e-12); above 0.1 for the gauge field", "horvat2024gauge"),
    "GF-7": Check("the intrinsic dimension of data on a plane in $\\mathbb R^5$ is read off the spectrum of the score's Jacobian (and of the flow map's) at small noise", "the true dimension, 2, for $t\\le0.05$", "horvat2024gauge"),
    "GF-8": Check("the intrinsic dimension of data on a circle in $\\mathbb R^3$, from the score Jacobian and from the SVD of scores near a point", "the true dimension, 1", "horvat2024gauge"),
    "MRS-1": Check("MRS is DPM-Solver++ on $y=x-\\mu$: exact on a point mass, first / second order on Gaussian data; the mean-reverting terminal law is $\\mathcal N(\\mu+\\epsilon(x_0-\\mu),\\lambda^2(1-\\epsilon^2))$", "the exact marginal and the exact PF-ODE map, to 1e-12 and by step-doubling ratios", "li2025mrs, luo2023irsde"),
    "PR-1": Check("the four prediction targets ($\\varepsilon$, $x_0$, score, velocity) convert into each other exactly, and $u=fx-\\tfrac12g^2s=\\dot\\alpha\\hat x_0+\\dot\\sigma\\hat\\varepsilon$", "the exact predictors of GMM2 on VP, VE-like and rectified-flow paths, to 1e-12", "lai2025principles"),
    "PR-2": Check("the DDPM posterior $q(x_{t-1}\\mid x_t,x_0)$ and DDIM's $\\eta=1$ variance", "Gaussian conditioning of the joint law of $(x_{t-1},x_t)$ given $x_0$, to 1e-12", "ho2020ddpm, song2021ddim"),
    "PR-3": Check("the continuous-time ELBO is tight for Gaussian data: bound minus entropy vanishes as the SNR range grows", "the entropy $\\tfrac12\\ln(2\\pi es^2)$ and the closed-form diffusion term; quadrature to 1e-6", "kingma2021vdm"),
    "PR-6": Check("flow-map identities for Gaussian data: the instantaneous velocity, the MeanFlow identity, shortcut self-consistency and the consistency (semigroup) property", "the exact Gaussian flow map, to 1e-8", "geng2025meanflow, frans2025shortcut, song2023consistency"),
    "PR-7": Check("one Euler step with the instantaneous velocity collapses every sample to the mean; one step of the exact flow map samples the data", "covariance exactly 0; the data's moments within Monte Carlo error", "geng2025meanflow"),
    "SDE-1": Check("the forward SDE's Euler–Maruyama paths have the perturbation kernel $\\mathcal N(\\alpha_tx_0,\\sigma_t^2)$", "the closed-form kernel of VP, sub-VP and VE: mean within 0.01, variance within 2 %", "song2021sde"),
    "SDE-2": Check("denoising score matching is minimised by the exact score, and its excess loss is $\\mathbb E\\lvert\\Delta\\rvert^2$", "perturbed scores with common random numbers; the predicted increase within 10 %", "vincent2011dsm, song2021sde"),
    "SDE-3": Check("reverse-diffusion, predictor–corrector and PF-ODE samplers with the exact score reproduce GMM2", "GMM2's exact mean, covariance and left mass: errors below 0.05, 0.12 and 0.015", "song2021sde"),
    "SDE-4": Check("the PF-ODE log-likelihood with the exact divergence equals the analytic density", "the analytic $\\log p_\\epsilon$ of GMM2 (not $\\log p_0$), to 1e-5", "song2021sde, chen2018neuralode"),
    "SDE-5": Check("Hutchinson's estimator of the divergence is unbiased in the PF-ODE likelihood", "the exact-divergence value, within 4 standard errors", "hutchinson1989trace, grathwohl2019ffjord"),
    "SDE-6": Check("replacement inpainting is exact for independent coordinates and biased when they correlate", "the exact conditional $\\mathcal N(1.5\\rho,1-\\rho^2)$, within Monte Carlo error at $\\rho=0$", "song2021sde"),
    "SDE-7": Check("the class-conditional score is $s+\\nabla\\log w_k$, and the guided PF-ODE with $\\gamma=1$ samples the class's component", "the component score (TK-4) and the component's moments", "song2021sde, ho2021cfg"),
    "SDE-8": Check("data $\\mathcal N(0,I)$ under VP is stationary: the PF-ODE drift vanishes and the likelihood is $\\log\\mathcal N(x;0,I)$", "0 and the standard normal log-density, to round-off", "song2021sde"),
    "SDE-9": Check("the VP and sub-VP schedule constants $\\alpha_1$, $\\sigma_1^2$, $B(1)$, and DDPM's $\\bar\\alpha_{1000}$ against $e^{-B(1)}$", "quadrature of $\\beta(t)$, to 1e-10", "song2021sde, ho2020ddpm"),
    "SI-1": Check("the stochastic interpolant's ODE and SDEs carry the base to a Gaussian target", "the target's mean and covariance, within 0.02", "albergo2023interpolants"),
    "SI-2": Check("the quadratic objectives for the drift and the score are minimised at the exact fields, with the predicted excess", "$\\tfrac12\\lvert\\delta\\rvert^2D$ and $\\tfrac12(0.1)^2\\mathbb E\\lvert s\\rvert^2$, within 15 %", "albergo2023interpolants"),
    "SI-3": Check("the denoiser identity $\\mathbb E\\lvert z-\\eta_z\\rvert^2=D-\\mathbb E\\lvert\\eta_z\\rvert^2$", "both sides by Monte Carlo, within 5 standard errors", "albergo2023interpolants"),
    "SI-4": Check("the one-sided interpolant with $\\alpha=1-t$, $\\varrho=t$ is rectified flow: its drift is the PF-ODE velocity", "the velocity from GMM2's exact posterior means, to 1e-10", "albergo2023interpolants, liu2023rectified"),
    "SI-5": Check("the interpolant's density solves the transport equation, and with the forward drift the Fokker–Planck equation", "0: relative residual on a 1-D grid below 1e-4", "albergo2023interpolants"),
    "TK-1": Check("the closed-form mixture score is $\\nabla\\log p_t$", "central differences of $\\log p_t$ ($h=10^{-5}$), to 1e-7", "derived (exact Gaussian-mixture marginals)"),
    "TK-2": Check("the closed-form Hessian of $\\log p_t$ is the score's Jacobian, and symmetric", "finite differences of the score (1e-7) and its transpose (1e-12)", "derived (exact Gaussian-mixture marginals)"),
    "TK-3": Check("Tweedie's formula $(x+\\sigma^2s)/\\alpha$ is the posterior mean, and $\\hat\\varepsilon=-\\sigma s$", "the component-wise posterior mean, to 1e-12", "derived (Tweedie's formula); song2021sde"),
    "TK-4": Check("the gradient of a component's log-responsibility is $s_k-s$", "finite differences, to 1e-7", "derived (exact Gaussian-mixture marginals)"),
    "TK-5": Check("Stokes: circulation over a small circle divided by its area tends to $v^\\top(J-J^\\top)u$", "the closed-form Jacobian of $(I+A)\\nabla\\log p_t$: relative gap below 1e-3 at $r=0.01$", "derived (Stokes' theorem)"),
    "WGF-1": Check("the exact PF velocity satisfies the continuity equation $\\partial_tp_t+\\nabla\\cdot(p_tu_t)=0$", "0: relative residual on a fine 1-D grid below 1e-4", "vuong2025score"),
    "WGF-2": Check("energy dissipation: $\\frac{d}{dt}\\mathrm{KL}(p_t\\Vert\\pi)=-\\tfrac12g^2\\mathbb E_{p_t}\\lvert\\nabla\\log p_t-\\nabla\\log\\pi\\rvert^2$", "the time derivative by finite differences, to 1e-5 relative", "vuong2025score, jordan1998jko"),
    "WGF-3": Check("a trained network's circulation around loops is small but not zero; the exact score's is zero", "0 for the exact score (to 1e-12); the trained network's order of magnitude", "vuong2025score"),
    "WGF-4": Check("Jacobian asymmetry of a trained score network is small, of a random one large, of the exact score zero", "the exact score (below 1e-12) and an untrained network of the same architecture", "vuong2025score"),
    "WGF-5": Check("the asymmetry of a sub-Jacobian on $k$ random pixels, for an image model", "an untrained network of the same architecture (a demonstration: no reference value)", "vuong2025score"),
    "WGF-6": Check("errors along the gauge direction $-\\tfrac12g^2A\\nabla\\log p_t$ leave the marginals unchanged; $-\\tfrac12g^2Ax$ does not", "checks GF-2 and GF-5: the continuity residual of the exact marginals", "vuong2025score, horvat2024gauge"),
    "WV-1": Check("the closed-form PF-ODE solution for Gaussian data equals a numerical solve", "scipy's DOP853 (rtol 1e-10), to 1e-8, for VP, sub-VP and VE", "wang2023painters"),
    "WV-2": Check("reference values of the closed-form solution for one start point", "a high-accuracy numerical solve written in the test, to 1e-9", "wang2023painters"),
    "WV-3": Check("the closed form pushes the exact $p_T$ onto the data law", "the Gaussian's mean and covariance, within Monte-Carlo error", "wang2023painters"),
    "WV-4": Check("for point-mass data the PF-ODE trajectory lies in a plane (a rotation for VP)", "rank 2: third singular value below 1e-10 of the first", "wang2023painters"),
    "WV-5": Check("a component of variance $\\lambda$ commits when $\\mathrm{SNR}(t)=1/\\lambda$: larger variances first", "the closed-form commitment time, to 1e-4, strictly decreasing in $\\lambda$", "wang2023painters"),
    "WV-6": Check("teleporting with the Gaussian closed form costs nothing early and much late on a mixture", "the exact PF-ODE with the mixture score: error growing as $t_{\\rm skip}$ falls", "wang2024teleport"),
    "WV-7": Check("a perturbation early in sampling flips the sample's mode more often than a late one", "mode-flip fractions of the exact PF-ODE, within Monte-Carlo slack", "wang2023painters"),
    "WV-8": Check("the Gaussian approximation of a mixture's score is accurate at high noise and degrades as $t$ falls", "the exact mixture score: relative error below 1e-3 for $t\\ge0.6$, increasing as $t$ decreases", "wang2024teleport"),
}
# fmt: on

REPO = FilePath(__file__).resolve().parent.parent
PAGE = "book/checks.md"
# A letter after the number names a part of a check (BG-3a is part of BG-3).
_ID = re.compile(r"\b(?:" + "|".join(PREFIXES) + r")-\d+(?=[a-z]?\b)")
# Words of the same shape that are not checks (licence names, hash names, ...).
_ANY_ID = re.compile(r"\b[A-Z]{2,4}-\d{1,2}\b")
NOT_CHECKS = {"BSD-2", "BSD-3", "CRC-32"}


# -- where each ID is used -------------------------------------------------------------------------------

def _notebook_ids(file: FilePath) -> set[str]:
    cells = json.loads(file.read_text())["cells"]
    return {i for cell in cells for i in _ID.findall("".join(cell["source"]))}


def _test_ids(file: FilePath) -> dict[str, list[str]]:
    """{ID: ["tests/test_x.py::test_name", ...]}: the test functions (or the file, for module-level
    mentions) whose source names the ID."""
    text = file.read_text()
    where: dict[str, list[str]] = {}
    inside = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            for i in sorted(set(_ID.findall(ast.get_source_segment(text, node) or ""))):
                where.setdefault(i, []).append(f"tests/{file.name}::{node.name}")
                inside.add(i)
    for i in sorted(set(_ID.findall(text)) - inside):
        where.setdefault(i, []).append(f"tests/{file.name}")
    return where


def usages(root: FilePath | None = None) -> dict[str, dict[str, list[str]]]:
    """{ID: {"chapters": [...notebook stems], "tests": [...], "modules": [...], "pages": [...]}} for every
    ID found in notebooks/*.ipynb, tests/*.py, diffusion_lessons/**/*.py and book/*.md (this module, its
    test and the generated page excepted)."""
    root = root or REPO
    found: dict[str, dict[str, list[str]]] = {}

    def add(i, kind, where):
        found.setdefault(i, {"chapters": [], "tests": [], "modules": [], "pages": []})[kind].append(where)

    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        for i in _notebook_ids(nb):
            add(i, "chapters", nb.stem)
    for test in sorted((root / "tests").glob("*.py")):
        if test.name == "test_checks.py":  # its toy examples are not uses
            continue
        for i, places in _test_ids(test).items():
            for place in places:
                add(i, "tests", place)
    for module in sorted((root / "diffusion_lessons").rglob("*.py")):
        if module.resolve() != FilePath(__file__).resolve():
            for i in sorted(set(_ID.findall(module.read_text()))):
                add(i, "modules", module.relative_to(root).as_posix())
    for page in sorted((root / "book").glob("*.md")):
        if page.name != FilePath(PAGE).name:
            for i in sorted(set(_ID.findall(page.read_text()))):
                add(i, "pages", page.relative_to(root).as_posix())
    return found


def unknown_shapes(root: FilePath | None = None) -> set[str]:
    """Words shaped like check IDs (two to four capitals, a dash, a number) whose prefix is not in PREFIXES:
    a new family someone forgot to register."""
    root = root or REPO
    files = [*(root / "notebooks").glob("*.ipynb"), *(p for p in (root / "tests").glob("*.py") if p.name != "test_checks.py"),
             *(p for p in (root / "diffusion_lessons").rglob("*.py") if p.name != "checks.py")]
    words = {w for f in files for w in _ANY_ID.findall(f.read_text())}
    return {w for w in words - NOT_CHECKS if w.split("-")[0] not in PREFIXES}


# -- the page --------------------------------------------------------------------------------------------

def _sort_key(check_id: str):
    prefix, number = check_id.rsplit("-", 1)
    return prefix, int(number)


def _source(text: str) -> str:
    """Bib keys become citations; other words stay as they are."""
    keys = _bib_keys()
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    cited = [p for p in parts if p in keys]
    rest = [p for p in parts if p not in keys]
    return "; ".join(([f"{{cite:p}}`{','.join(cited)}`"] if cited else []) + rest)


def _bib_keys(root: FilePath | None = None) -> set[str]:
    bib = (root or REPO) / "book" / "references.bib"
    return set(re.findall(r"^@\w+\{([^,\s]+),", bib.read_text(), flags=re.MULTILINE)) if bib.is_file() else set()


def _chapter_number(stem: str) -> str:
    """'11a_guidance' -> '11a', '05_probability_flow' -> '5'."""
    number = re.match(r"\d+[a-z]?", stem).group()
    return number.lstrip("0") or "0"


def _where(use: dict[str, list[str]]) -> str:
    chapters = [f"{{doc}}`ch. {_chapter_number(stem)} <../notebooks/{stem}>`" for stem in use["chapters"]]
    tests = [f"`{t}`" for t in use["tests"]]
    return ", ".join(chapters + tests) or "—"


def render_page(root: FilePath | None = None) -> str:
    """The MyST markdown of the Checks page."""
    use = usages(root)
    empty = {"chapters": [], "tests": [], "modules": [], "pages": []}
    rows = [f"| {i} | {c.statement} | {c.reference} | {_source(c.source)} | {_where(use.get(i, empty))} |"
            for i, c in sorted(CHECKS.items(), key=lambda kv: _sort_key(kv[0]))]
    return "\n".join([
        "# Checks",
        "",
        "Every claim in this book that has a known answer is checked, in a chapter (an `assert` whose",
        "tolerance is printed beside the measured value) or in the package's tests, and each such check has",
        "an ID. This page lists them: what is asserted, what it is compared against, where the formula or the",
        "value comes from, and where it is asserted. Chapters and the package's docstrings cite a check by",
        "its ID (\"check WV-2\").",
        "",
        "This page is generated from the registry in `diffusion_lessons/checks.py` by",
        "`python -m diffusion_lessons.checks --write book/checks.md`; a test fails when it is stale, when an ID",
        "used in a chapter or a test has no entry, or when an entry is used nowhere.",
        "",
        "| ID | what is asserted | compared against | source | where |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lessons.checks", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FILE", type=FilePath, help="write the Checks page to FILE")
    group.add_argument("--check", metavar="FILE", type=FilePath, help="exit 1 if FILE is not the current page")
    args = parser.parse_args(argv)
    page = render_page()
    if args.write:
        args.write.write_text(page)
        print(f"wrote {args.write} ({len(CHECKS)} checks)")
        return 0
    if not args.check.is_file() or args.check.read_text() != page:
        print(f"{args.check} is stale: run python -m diffusion_lessons.checks --write {args.check}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
