"""Sample-quality metrics against cases with exact answers (numpy/scipy references written here)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm

import diffusion_lessons as dl
from diffusion_lessons.metrics import (
    classifier_frechet_distance,
    frechet_distance,
    gaussian_frechet_distance,
    mmd,
    moment_errors,
    nearest_neighbour_distance,
    sliced_w2,
    train_digit_classifier,
    w2_exact,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_moment_errors_against_exact_mixture_moments():
    gm = dl.gmm2()
    n = 40_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0))
    err = moment_errors(x, gm, left_mass=True)
    # MC: standard errors of the mean are sqrt(diag C / n) <= sqrt(3.65 / 4e4) ~ 0.0096
    assert err["mean"] < 5 * math.sqrt(3.65 / n)
    assert err["cov"] < 0.15
    exact_left = 0.3 * norm.cdf(2.0 / math.sqrt(0.5)) + 0.7 * norm.cdf(-2.0 / math.sqrt(0.2))
    assert abs(exact_left - 0.30) < 0.01  # about 0.30
    assert err["left_mass"] < 5 * math.sqrt(exact_left * (1 - exact_left) / n)
    # a biased sample is caught
    shifted = moment_errors(x + torch.tensor([0.5, 0.0], dtype=x.dtype), gm)
    assert abs(shifted["mean"] - 0.5) < 0.05
    # reference given as samples: identical sets have zero error
    same = moment_errors(x, x.clone(), left_mass=True)
    assert same["mean"] == 0 and same["cov"] < 1e-12 and same["left_mass"] == 0


def test_sliced_w2_in_1d_is_the_exact_empirical_w2():
    x, y = _rng(1).normal(1.0, 2.0, 500), _rng(2).normal(-0.5, 1.0, 500)
    exact = math.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    assert abs(sliced_w2(torch.from_numpy(x), torch.from_numpy(y)) - exact) < 1e-12
    # unequal sizes: against the LP solution of POT
    ot = pytest.importorskip("ot")
    y3 = y[:300]
    cost = (x[:, None] - y3[None]) ** 2
    lp = math.sqrt(ot.emd2(np.full(500, 1 / 500), np.full(300, 1 / 300), cost))
    assert abs(sliced_w2(torch.from_numpy(x), torch.from_numpy(y3)) - lp) < 1e-9


def test_sliced_w2_between_gaussians():
    """1-D: W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2); isotropic R^D: sqrt(|dm|^2 / D + (s1 - s2)^2)."""
    n = 20_000
    z1, z2 = _rng(3).normal(size=(n, 1)), _rng(4).normal(size=(n, 1))
    got = sliced_w2(torch.from_numpy(1.0 + 2.0 * z1), torch.from_numpy(-1.0 + 1.5 * z2))
    assert abs(got - math.sqrt(4.0 + 0.25)) < 0.03
    # 2-D, equal means: every direction gives |s1 - s2|, so only the sampling error remains
    n = 5_000
    z1, z2 = _rng(5).normal(size=(n, 2)), _rng(6).normal(size=(n, 2))
    gen = torch.Generator().manual_seed(0)
    got = sliced_w2(torch.from_numpy(z1), torch.from_numpy(0.5 * z2), n_projections=256, generator=gen)
    assert abs(got - 0.5) < 0.03
    # shifted means: E_theta (theta . dm)^2 = |dm|^2 / 2; with 512 directions its relative standard
    # error is sqrt(1/8) / (1/2) / sqrt(512) = 3 %, i.e. about 0.03 on the distance: allow 0.1
    dm = np.array([1.0, 2.0])
    got = sliced_w2(torch.from_numpy(z1 + dm), torch.from_numpy(0.5 * z2), n_projections=512, generator=gen)
    assert abs(got - math.sqrt(dm @ dm / 2 + 0.25)) < 0.1


def test_w2_exact_translation_and_permutation():
    pytest.importorskip("ot")
    x = _rng(7).normal(size=(200, 3))
    shift = np.array([0.3, -1.0, 2.0])
    y = (x + shift)[_rng(8).permutation(200)]
    # for a translation the optimal coupling is the translation itself: W2 = |shift|
    assert abs(w2_exact(torch.from_numpy(x), torch.from_numpy(y)) - np.linalg.norm(shift)) < 1e-9
    assert w2_exact(torch.from_numpy(x), torch.from_numpy(x[::-1].copy())) < 1e-6  # sqrt of a roundoff-level cost
    # 1-D: equal to the sorted coupling
    a, b = _rng(9).normal(size=(100, 1)), _rng(10).normal(size=(100, 1))
    assert abs(w2_exact(torch.from_numpy(a), torch.from_numpy(b)) - sliced_w2(torch.from_numpy(a), torch.from_numpy(b))) < 1e-9


def _permutation_sd(x, y, bandwidth, n_perm=20, seed=0):
    """Null spread of the MMD statistic: its standard deviation over random relabellings of the pooled sample."""
    pooled = torch.cat([x, y])
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_perm):
        idx = torch.randperm(pooled.shape[0], generator=gen)
        vals.append(mmd(pooled[idx[: len(x)]], pooled[idx[len(x):]], bandwidth))
    return float(np.std(vals))


def test_mmd_zero_for_same_law_and_exact_for_a_shift():
    n, h = 400, 1.0
    x = torch.from_numpy(_rng(11).normal(size=(n, 2)))
    y = torch.from_numpy(_rng(12).normal(size=(n, 2)))
    sd = _permutation_sd(x, y, h)
    assert abs(mmd(x, y, h)) < 5 * sd  # same law: E[MMD_u^2] = 0
    assert abs(mmd(x, x, h)) < 2.0 / n  # with itself: only the diagonal terms differ, O(1/n)
    delta = np.array([1.0, 0.0])
    shifted = y + torch.from_numpy(delta)
    # population value for N(0, I) vs N(delta, I), D = 2: 2 (h^2/(h^2+2))^{D/2} (1 - exp(-|delta|^2 / (2(h^2 + 2))))
    exact = 2 * (h**2 / (h**2 + 2)) * (1 - math.exp(-delta @ delta / (2 * (h**2 + 2))))
    got = mmd(x, shifted, h)
    assert got > 10 * sd and abs(got - exact) < 5 * sd, (got, exact, sd)
    assert mmd(x, shifted) > 0  # median-heuristic bandwidth


def test_mmd_in_blocks_is_the_u_statistic_written_out():
    """Sets larger than one block of rows (512), of unequal sizes: the blockwise sums equal the U-statistic's
    double sums written out in numpy, with i = j left out of the within-set means."""
    x, y = _rng(21).normal(size=(1100, 3)), _rng(22).normal(size=(700, 3)) + 0.2
    h = 1.3

    def kernel(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * h**2))

    kxx, kyy = kernel(x, x), kernel(y, y)
    expected = ((kxx.sum() - np.trace(kxx)) / (1100 * 1099) + (kyy.sum() - np.trace(kyy)) / (700 * 699)
                - 2 * kernel(x, y).mean())
    got = mmd(torch.from_numpy(x), torch.from_numpy(y), h)
    assert abs(got - expected) < 1e-12, (got, expected)
    assert abs(mmd(torch.from_numpy(y), torch.from_numpy(x), h) - expected) < 1e-12

def test_nearest_neighbour_distance_on_a_grid():
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).reshape(-1, 2).double()
    offsets = torch.from_numpy(_rng(13).uniform(-0.3, 0.3, size=(25, 2)))
    d = nearest_neighbour_distance(grid + offsets, grid, chunk=7)
    assert d.shape == (25,) and torch.allclose(d, offsets.norm(dim=1), atol=1e-12)
    assert float(nearest_neighbour_distance(grid, grid).max()) == 0.0


def _with_moments(mean, cov, n, seed):
    """n points whose sample mean and (unbiased) covariance are exactly mean, cov."""
    z = _rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T
    return mean + z @ np.linalg.cholesky(cov).T


def test_frechet_distance_against_scipy_sqrtm():
    A, B = _rng(14).normal(size=(4, 4)), _rng(15).normal(size=(4, 4))
    c1, c2 = A @ A.T + 0.1 * np.eye(4), B @ B.T + 0.1 * np.eye(4)
    m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, -1.0])
    ref = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert abs(gaussian_frechet_distance(m1, c1, m2, c2) - ref) < 1e-9
    # diagonal covariances: |dm|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.0]), np.array([4.0, 1.0, 9.0, 1.0])
    assert abs(gaussian_frechet_distance(m1, np.diag(a), m2, np.diag(b)) - (np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))) < 1e-12
    # from features whose sample moments are exactly (m1, c1) and (m2, c2)
    fx, fy = _with_moments(m1, c1, 300, 16), _with_moments(m2, c2, 500, 17)
    assert abs(frechet_distance(torch.from_numpy(fx), torch.from_numpy(fy)) - ref) < 1e-8
    assert abs(frechet_distance(torch.from_numpy(fx), torch.from_numpy(fx))) < 1e-8


def test_digit_classifier_trains_caches_and_separates_digits_from_noise(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    from diffusion_lessons.datasets import digits

    clf = train_digit_classifier(size=16)
    assert clf.test_accuracy > 0.93
    files = list(tmp_path.glob("digit_classifier-*.pt"))
    assert len(files) == 1
    again = train_digit_classifier(size=16)  # from the cache: identical outputs
    x = digits(16)
    with torch.no_grad():
        assert torch.equal(clf(x[:50]), again(x[:50]))
        assert clf.features(x[:5]).shape == (5, 64)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    half_a, half_b = x[perm[:800]], x[perm[800:1600]]
    noise = torch.rand(800, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    close = classifier_frechet_distance(half_a, half_b, clf)
    far = classifier_frechet_distance(noise, half_b, clf)
    assert 0 <= close < far / 10, (close, far)
    # a corrupt cache file is retrained, not trusted (a cheap 1-epoch model for this check)
    train_digit_classifier(size=8, epochs=1)
    small = tmp_path / "digit_classifier-s8-e1-seed0.pt"
    small.write_bytes(b"not a checkpoint")
    assert train_digit_classifier(size=8, epochs=1).test_accuracy > 0.3
    assert torch.load(small, weights_only=True)["test_accuracy"] > 0.3


def test_classifiers_for_32x32_digits_and_procedural_images(tmp_path, monkeypatch, one_thread):
    """No downloaded weights: a 32x32 digit classifier and a procedural-family one, each trained here;
    the Fréchet distance between two real sets is far below that to noise or to a wrong family mix."""
    monkeypatch.setenv("DIFFUSION_LESSONS_CACHE", str(tmp_path))
    from diffusion_lessons.datasets import PROCEDURAL_FAMILIES, digits, procedural_images
    from diffusion_lessons.metrics import train_procedural_classifier

    clf = train_digit_classifier(size=32, epochs=8)
    assert clf.test_accuracy > 0.9
    x = digits(32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    real, held = x[perm[300:900]], x[perm[:300]]
    noise = torch.rand(600, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert classifier_frechet_distance(real, held, clf) < classifier_frechet_distance(noise, held, clf) / 10

    proc = train_procedural_classifier(size=32)
    assert proc.test_accuracy > 0.97 and proc.head.out_features == len(PROCEDURAL_FAMILIES)
    assert len(list(tmp_path.glob("procedural_classifier-s32-*.pt"))) == 1
    again = train_procedural_classifier(size=32)  # from the cache
    draw = lambda n, seed, fams=PROCEDURAL_FAMILIES: procedural_images(  # noqa: E731
        n, size=32, families=fams, generator=torch.Generator().manual_seed(seed))
    a, b = draw(500, 1), draw(500, 2)
    with torch.no_grad():
        assert torch.equal(proc(a[:20]), again(a[:20]))
    floor = classifier_frechet_distance(a, b, proc)
    assert 10 * floor < classifier_frechet_distance(draw(500, 3, ("blob", "ring")), b, proc)
    assert 10 * floor < classifier_frechet_distance(torch.rand_like(a) * 2 - 1, b, proc)
    with pytest.raises(ValueError, match="at least two families"):
        train_procedural_classifier(size=32, families=("blob",))
