"""Denoising MCMC (check FS-5): the Langevin step's stationary variance (closed form vs the iterated recursion, and
the package's chain by Monte Carlo), exact Gibbs on (x, k) keeps k uniform, "keep the smallest sigma" is biased;
a trained noise-level classifier beats the uniform guess; the full sampler runs on the exact score."""
import math

import numpy as np
import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")


def test_fs5a_langevin_stationary_variance():
    """Check FS-5 (a): x <- x + eta/2 (-x/c) + sqrt(eta) z has stationary variance c / (1 - eta/(4c)): the closed form
    equals the recursion v <- (1 - eta/(2c))^2 v + eta iterated here (1e-10); eta = 0.8 and c = 1.25, 0.2501
    (sigma ~ 0.01 on data of variance 0.25: a 5-fold inflation); the package's chain at a fixed level, 20 000 chains,
    within 5 s.e. of it."""
    for c in (1.25, 0.2501):
        v = 0.0
        for _ in range(20_000):
            v = (1 - 0.8 / (2 * c)) ** 2 * v + 0.8
        closed = dl.langevin_stationary_variance(c, 0.8)
        print(f"FS-5 (a) c={c}: closed form {closed:.6f}, recursion {v:.6f}")
        assert abs(closed - v) < 1e-10
    sigmas = torch.tensor([1.0, 0.5], **F64)  # level 1: score of N(0, 0.25 + 0.5^2) = N(0, 0.5)
    path = dl.EDM(80.0)
    score = lambda x, t: -x / (0.25 + (80.0 * t.reshape(-1, 1)) ** 2)
    move = dl.langevin_move(score, path, sigmas, 0.8)
    x = torch.zeros(20_000, 1, **F64)
    k = torch.ones(20_000, dtype=torch.long)
    chain = dl.noise_level_chain(x, k, move, None, 60, update="fixed", generator=torch.Generator().manual_seed(0))
    exact = dl.langevin_stationary_variance(0.5, 0.8)
    se = exact * math.sqrt(2 / (20_000 - 1))
    print(f"FS-5 (a) chain variance {float(chain.x.var()):.4f}, exact {exact:.4f}, 5 s.e. {5 * se:.4f}")
    assert abs(float(chain.x.var()) - exact) < 5 * se
    with pytest.raises(ValueError, match="0 < step < 4 c"):
        dl.langevin_stationary_variance(0.1, 0.8)


def _exact_gibbs(sigmas, n, sweeps, update, seed=0):
    """Exact conditionals for N(0, 0.25) data: x | k ~ N(0, 0.25 + sigma_k^2); log p(k | x) = log N(x; 0, 0.25 + sigma_k^2) + c."""
    var = 0.25 + sigmas**2

    def move(x, k, generator):
        return torch.sqrt(var[k]).reshape(-1, 1) * torch.randn(x.shape, generator=generator, **F64)

    def logits(x):
        return -0.5 * x**2 / var - 0.5 * torch.log(var)

    g = torch.Generator().manual_seed(seed)
    k0 = torch.randint(len(sigmas), (n,), generator=g)
    return dl.noise_level_chain(torch.zeros(n, 1, **F64), k0, move, logits, sweeps, update, g, keep_steps=True), var


def test_fs5b_exact_gibbs_keeps_the_level_uniform():
    """Check FS-5 (b): exact Gibbs on the code's 1000-level grid (sigma 0.01 -> 50), data N(0, 0.25), 20 000 chains,
    10 sweeps: each decile of the level index holds 1/10 of the chains within 5 standard errors."""
    sigmas = dl.noise_levels(1000, 0.01, 50.0)
    chain, _ = _exact_gibbs(sigmas, 20_000, 10, "sample")
    deciles = torch.bincount(chain.k // 100, minlength=10).double() / 20_000
    se = math.sqrt(0.1 * 0.9 / 20_000)
    print("FS-5 (b) level deciles", [round(v, 4) for v in deciles.tolist()], "5 s.e.", round(5 * se, 4))
    assert float((deciles - 0.1).abs().max()) < 5 * se


def test_fs5c_keeping_the_smallest_sigma_is_biased():
    """Check FS-5 (c): at the state kept by "smallest sigma of 10 sweeps", E[x^2 / (0.25 + sigma^2)] > 1.1 (it is 1 for
    an unbiased draw: the kept x_j was drawn at the larger sigma_{j-1}); (d) with the code's argmax level step the
    ratio after 10 sweeps is reported."""
    sigmas = dl.noise_levels(1000, 0.01, 50.0)
    chain, var = _exact_gibbs(sigmas, 20_000, 10, "sample", seed=1)
    selected = float((chain.x_best[:, 0] ** 2 / var[chain.k_best]).mean())
    unbiased = float((chain.x[:, 0] ** 2 / var[chain.levels[-2]]).mean())  # x_10 against the level it was drawn at
    map_chain, _ = _exact_gibbs(sigmas, 20_000, 10, "map", seed=2)
    ratio_map = float((map_chain.x[:, 0] ** 2 / var[map_chain.k]).mean())
    print(f"FS-5 (c) kept state {selected:.3f}, a plain draw {unbiased:.3f}; (d) argmax level step {ratio_map:.3f}")
    assert selected > 1.1
    assert abs(unbiased - 1) < 5 * math.sqrt(2 / 20_000)


def test_noise_level_classifier_learns_and_dmcmc_samples():
    """A noise-level classifier trained on N(0, 0.25) data (40 levels) reaches a cross-entropy below that of the uniform
    guess (log 40) by 90 % of what the exact posterior gains over it (1-D data carry little about sigma: ~0.5 nat); denoising_mcmc with the exact score
    then returns finite samples whose variance is within 25 % of 0.25 (a short chain: a smoke check, not FS-5)."""
    torch.manual_seed(0)
    sigmas = dl.noise_levels(40, 0.01, 20.0)
    data = 0.5 * torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), **F64)
    classifier = dl.NoiseLevelClassifier(1, 40, hidden=64).double()
    dl.train_noise_classifier(classifier, data, sigmas, steps=500, batch_size=512)
    g = torch.Generator().manual_seed(1)
    k = torch.randint(40, (20_000,), generator=g)
    x = 0.5 * torch.randn(20_000, 1, generator=g, **F64) + sigmas[k].reshape(-1, 1) * torch.randn(20_000, 1, generator=g, **F64)
    with torch.no_grad():
        ce = float(torch.nn.functional.cross_entropy(classifier(x), k))
    var = 0.25 + sigmas**2
    exact = float(torch.nn.functional.cross_entropy(-0.5 * x**2 / var - 0.5 * torch.log(var), k))
    print(f"classifier cross-entropy {ce:.3f}, exact posterior {exact:.3f}, uniform {math.log(40):.3f}")
    assert math.log(40) - ce > 0.9 * (math.log(40) - exact)
    path = dl.EDM(80.0)
    score = lambda x, t: -x / (0.25 + (80.0 * torch.as_tensor(t, **F64).reshape(-1, 1)) ** 2)
    start = 3.0 * torch.randn(512, 1, generator=g, **F64)
    with torch.no_grad():
        out, nfe, chain = dl.denoising_mcmc(score, path, start, sigmas, classifier, sweeps=20, step_size=0.05,
                                            generator=g)
    print("DMCMC variance", float(out.var()), "nfe", nfe, "levels kept", np.unique(chain.k_best.numpy()).size)
    assert bool(torch.isfinite(out).all()) and abs(float(out.var()) / 0.25 - 1) < 0.25
    with pytest.raises(ValueError, match="alpha = 1"):
        dl.langevin_move(score, dl.VP(), sigmas, 0.1)
