"""Sample-quality measures with known answers: moments, Wasserstein-2 (sliced and exact), MMD,
nearest-neighbour distances, and a classifier-based Fréchet distance for digit and procedural images
(small classifiers the package trains itself: no downloaded weights).

All take torch tensors of samples [N, ...] (flattened to [N, D]) and return Python floats unless
said otherwise. Each is checked in tests/test_metrics.py against a case whose answer is exact.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "moment_errors",
    "moment_standard_errors",
    "sliced_w2",
    "sliced_w2_floor",
    "relative_field_error",
    "w2_exact",
    "mmd",
    "nearest_neighbour_distance",
    "frechet_distance",
    "gaussian_frechet_distance",
    "DigitClassifier",
    "train_digit_classifier",
    "train_image_classifier",
    "train_procedural_classifier",
    "classifier_frechet_distance",
]


def _flat(x: torch.Tensor, who: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError(f"{who} expects a tensor of samples [N, ...]; got {type(x).__name__}")
    x = x.detach()
    return (x[:, None] if x.dim() == 1 else x.reshape(x.shape[0], -1)).to(torch.float64)


def _same_dim(x, y, who):
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{who}: the two sets have different dimensions, {x.shape[1]} and {y.shape[1]}")


# -- moments ---------------------------------------------------------------------------------------
def _left_mass(reference) -> float:
    """P(x_1 < 0) for a Gaussian mixture: sum_k pi_k Phi(-mu_k1 / sqrt(Sigma_k11))."""
    mu = reference.means[:, 0].double().cpu()
    sd = reference.covs[:, 0, 0].double().cpu().sqrt()
    cdf = torch.where(sd > 0, 0.5 * torch.erfc(mu / (sd * math.sqrt(2)).clamp_min(1e-300)), (mu < 0).double())
    return float(reference.weights.double().cpu() @ cdf)


def moment_errors(samples: torch.Tensor, reference, left_mass: bool = False) -> dict:
    """Errors of the first two moments of `samples` [N, D] against `reference`.

    reference: samples [M, D], or a distribution with mean() and covariance() (e.g. dl.GaussianMixture,
    whose exact moments are then used). Returns {"mean": max |m - m_ref|, "cov": max |C - C_ref|
    (entrywise)}, plus "left_mass": |P(x_1 < 0) - P_ref(x_1 < 0)| when left_mass (for a mixture
    reference the exact mass sum_k pi_k Phi(-mu_k1 / sqrt(Sigma_k11)) is used).
    """
    x = _flat(samples, "moment_errors")
    if isinstance(reference, torch.Tensor):
        y = _flat(reference, "moment_errors")
        _same_dim(x, y, "moment_errors")
        m_ref, c_ref = y.mean(0), torch.atleast_2d(torch.cov(y.T))
        mass_ref = float((y[:, 0] < 0).double().mean()) if left_mass else None
    else:
        m_ref, c_ref = reference.mean().double().cpu(), reference.covariance().double().cpu()
        mass_ref = _left_mass(reference) if left_mass else None
    out = {
        "mean": float((x.mean(0).cpu() - m_ref.cpu()).abs().max()),
        "cov": float((torch.atleast_2d(torch.cov(x.T)).cpu() - c_ref.cpu()).abs().max()),
    }
    if left_mass:
        out["left_mass"] = abs(float((x[:, 0] < 0).double().mean()) - mass_ref)
    return out


def moment_standard_errors(dist, n: int, draws: int = 200_000, seed: int = 12345) -> dict:
    """Standard errors of the sample mean and of the sample covariance of n draws from `dist`.

    Returns {"mean": tensor [D], "cov": tensor [D, D]}: the standard deviation of each entry of the
    sample mean, sqrt(C_ii / n), and of each entry of the sample covariance,
    sqrt((E[(x_i - m_i)^2 (x_j - m_j)^2] - C_ij^2) / n) (to leading order in 1/n). For a Gaussian the
    fourth moment is exact, C_ii C_jj + C_ij^2; for any other law with mean() / covariance() / sample()
    (e.g. a mixture) it is estimated from `draws` exact samples. Monte Carlo tolerances in the book are a
    stated number of these standard errors.
    """
    if int(n) < 2:
        raise ValueError(f"moment_standard_errors needs n >= 2 samples; got {n}")
    cov = dist.covariance().double().cpu()
    var = cov.diagonal()
    if getattr(dist, "n_components", None) == 1:
        fourth = var[:, None] * var[None, :] + 2 * cov**2  # Isserlis: E[x_i^2 x_j^2] = C_ii C_jj + 2 C_ij^2
    else:
        x = dist.sample(int(draws), generator=torch.Generator().manual_seed(seed)).double().cpu()
        c = x - dist.mean().double().cpu()
        fourth = torch.einsum("ni,nj->ij", c**2, c**2) / len(c)
    return {"mean": (var / n).sqrt(), "cov": ((fourth - cov**2).clamp_min(0) / n).sqrt()}


# -- Wasserstein-2 -----------------------------------------------------------------------------------
def _w2_squared_1d(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between 1-D empirical measures, column by column of sorted px [n, P], py [m, P]:
    the integral over u in (0, 1) of (F_x^{-1}(u) - F_y^{-1}(u))^2, piecewise constant between the
    levels i/n and j/m."""
    n, m = px.shape[0], py.shape[0]
    if n == m:
        return ((px - py) ** 2).mean(0)
    kw = dict(dtype=torch.float64, device=px.device)
    levels = torch.unique(torch.cat([torch.arange(1, n + 1, **kw) / n, torch.arange(1, m + 1, **kw) / m]))
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - widths / 2
    ix = (mid * n).floor().long().clamp_max(n - 1)
    iy = (mid * m).floor().long().clamp_max(m - 1)
    return (widths[:, None] * (px[ix] - py[iy]) ** 2).sum(0)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
              generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance: sqrt(E_theta W2^2(theta^T x, theta^T y)), theta uniform on the sphere.

    Each 1-D W2 is exact between the projected empirical measures (sorted values; quantile functions
    when the sizes differ). In 1-D the result is the exact W2 of the two empirical measures. For two
    Gaussians N(m1, s1^2 I), N(m2, s2^2 I) in R^D it tends to sqrt(|m1 - m2|^2 / D + (s1 - s2)^2).
    """
    x, y = _flat(x, "sliced_w2"), _flat(y, "sliced_w2")
    _same_dim(x, y, "sliced_w2")
    d = x.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=torch.float64)
    else:
        theta = torch.randn(d, int(n_projections), generator=generator, dtype=torch.float64)
        theta = theta / theta.norm(dim=0, keepdim=True)
    theta = theta.to(x.device)
    px, py = (x @ theta).sort(0).values, (y.to(x.device) @ theta).sort(0).values
    return float(_w2_squared_1d(px, py).mean().sqrt())


def sliced_w2_floor(draw, n: int, pairs: int = 5, seed: int = 100, n_projections: int = 256) -> float:
    """The noise floor of sliced_w2 at sample size n: its mean between `pairs` pairs of independent exact
    sets, draw(n, generator) -> [n, D] (e.g. ``lambda n, g: dist.sample(n, generator=g)``). A model whose
    samples reach this value is indistinguishable from the data by the metric at this n."""
    if int(pairs) < 1:
        raise ValueError(f"sliced_w2_floor needs pairs >= 1; got {pairs}")
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(int(pairs)):
        total += sliced_w2(draw(int(n), gen).double(), draw(int(n), gen).double(), n_projections, generator=gen)
    return total / int(pairs)


def relative_field_error(field, reference, x: torch.Tensor, t) -> float:
    """Relative L2(p) error of a field: sqrt(E ||field(x, t) - reference(x, t)||^2 / E ||reference(x, t)||^2).

    x: points [N, ...] drawn from the law the error is measured under (usually p_t); t a float or [N].
    Both fields are evaluated in x's dtype (wrap a network with dl.as_field) without a graph.
    """
    with torch.no_grad():
        f, r = field(x, t), reference(x, t)
    if f.shape != r.shape:
        raise ValueError(f"relative_field_error: the fields disagree in shape, {list(f.shape)} and {list(r.shape)}")
    num = (f.double() - r.double()).flatten(1).pow(2).sum(1).mean()
    den = r.double().flatten(1).pow(2).sum(1).mean()
    if not den > 0:
        raise ValueError("relative_field_error: the reference field is zero on these points")
    return float((num / den).sqrt())


def w2_exact(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between the empirical measures of x [N, D] and y [M, D] (uniform weights), by linear
    programming (POT's ot.emd2 on squared Euclidean costs). Cost O(N M) memory: keep N, M <= a few thousand.
    """
    try:
        import ot
    except ImportError as err:
        raise ImportError("w2_exact needs POT (Python Optimal Transport): `pip install pot`; "
                          "sliced_w2 needs nothing extra") from err
    x, y = _flat(x, "w2_exact").cpu(), _flat(y, "w2_exact").cpu()
    _same_dim(x, y, "w2_exact")
    cost = torch.cdist(x, y) ** 2
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    value = ot.emd2(a.numpy(), b.numpy(), cost.numpy(), numItermax=10_000_000)
    return math.sqrt(max(float(value), 0.0))


# -- MMD ---------------------------------------------------------------------------------------------
def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased estimate of MMD^2 with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)) (Gretton et al. 2012):

        MMD_u^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).

    Its expectation is 0 when x and y come from the same law, so it can be slightly negative.
    bandwidth h: default the median pairwise distance of the pooled samples (median heuristic).
    """
    x, y = _flat(x, "mmd"), _flat(y, "mmd").to(x.device)
    _same_dim(x, y, "mmd")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("mmd needs at least 2 samples in each set")
    if bandwidth is None:
        pooled = torch.cat([x, y])[:2000]
        dist = torch.pdist(pooled)
        bandwidth = float(dist.median()) if dist.numel() else 1.0
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive; got {bandwidth}")
    term_x = _kernel_sum(x, x, bandwidth, off_diagonal=True) / (n * (n - 1))
    term_y = _kernel_sum(y, y, bandwidth, off_diagonal=True) / (m * (m - 1))
    return float(term_x + term_y - 2 * _kernel_sum(x, y, bandwidth) / (n * m))


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, bandwidth: float, off_diagonal: bool = False, rows: int = 512):
    """sum_ij k(a_i, b_j) of the Gaussian kernel (i != j only, for a set with itself, when off_diagonal), a block of
    rows at a time: memory O(rows len(b)) instead of O(len(a) len(b)), and 3x faster at 5000 points. The diagonal
    is left out as cdist computes it, which need not be exactly 0 between a point and itself."""
    total = a.new_zeros(())
    for start in range(0, a.shape[0], rows):
        block = torch.cdist(a[start:start + rows], b).square_().div_(-2 * bandwidth**2).exp_()
        total += block.sum()
        if off_diagonal:
            total -= block[:, start:start + rows].diagonal().sum()
    return total


def nearest_neighbour_distance(samples: torch.Tensor, data: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each sample to its nearest point of `data` (both flattened): tensor [N].

    Small values mean samples near the data; exactly 0 means a copy of a training point.
    """
    x, y = _flat(samples, "nearest_neighbour_distance"), _flat(data, "nearest_neighbour_distance")
    _same_dim(x, y, "nearest_neighbour_distance")
    y = y.to(x.device)
    return torch.cat([torch.cdist(x[i:i + chunk], y).min(1).values for i in range(0, x.shape[0], chunk)])


# -- Fréchet distance ----------------------------------------------------------------------------------
def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(0.5 * (c + c.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def gaussian_frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Squared Fréchet (W2) distance between N(m1, C1) and N(m2, C2):

        |m1 - m2|^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2}).

    This is what FID reports (the square, no root). Computed by symmetric eigendecompositions in float64.
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64).cpu() for m in (mean1, mean2))
    c1, c2 = (torch.atleast_2d(torch.as_tensor(c, dtype=torch.float64).cpu()) for c in (cov1, cov2))
    root1 = _sqrtm_psd(c1)
    cross = torch.linalg.eigvalsh(root1 @ c2 @ root1).clamp_min(0).sqrt().sum()
    return float(((m1 - m2) ** 2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross)


def frechet_distance(features_x: torch.Tensor, features_y: torch.Tensor) -> float:
    """Squared Fréchet distance between Gaussians fitted to two feature sets [N, F], [M, F] (as FID)."""
    x, y = _flat(features_x, "frechet_distance"), _flat(features_y, "frechet_distance")
    _same_dim(x, y, "frechet_distance")
    cov = lambda a: torch.atleast_2d(torch.cov(a.T))  # noqa: E731
    return gaussian_frechet_distance(x.mean(0), cov(x), y.mean(0), cov(y))


# -- a small image classifier, for a Fréchet distance on digit and procedural images ---------------------
class DigitClassifier(nn.Module):
    """A small CNN for [N, 1, s, s] images in [-1, 1], any s >= pool: images are first averaged down to
    pool x pool (8 for the digits, their native resolution, so nothing is lost and the cost does not
    grow with s), then two 3x3 convolutions, a `features`-unit hidden layer (the embedding of the
    Fréchet distance) and `num_classes` logits. The defaults are the digits' (8 x 8, 10 classes)."""

    def __init__(self, width: int = 32, features: int = 64, num_classes: int = 10, pool: int = 8):
        super().__init__()
        if pool < 2 or pool % 2:
            raise ValueError(f"pool must be an even integer >= 2; got {pool}")
        self.body = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * width * (pool // 2) ** 2, features), nn.SiLU(),
        )
        self.head = nn.Linear(features, num_classes)
        self.test_accuracy: float | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations [N, features] (the embedding of the Fréchet distance)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _load_classifier(file, model: DigitClassifier, verbose: bool) -> DigitClassifier | None:
    """The cached classifier in `file` loaded into `model`, or None (absent, corrupt or foreign)."""
    from .checkpoints import load_verified

    if not file.is_file():
        return None
    try:
        saved = load_verified(file)  # every record checked against its CRC-32, weights-only
        model.load_state_dict(saved["state_dict"])
        model.test_accuracy = float(saved["test_accuracy"])
        return model.eval()
    except Exception as err:  # a corrupt or foreign file: retrain and overwrite it
        if verbose:
            print(f"ignoring unreadable classifier cache {file}: {err}")
        return None


def train_image_classifier(x: torch.Tensor, y: torch.Tensor, file=None, epochs: int = 20, seed: int = 0,
                           verbose: bool = False, **classifier_args) -> DigitClassifier:
    """Train a DigitClassifier(**classifier_args) on images x [N, 1, s, s] with labels y [N] (int64).

    85 % of the images train it (Adam, lr 3e-3, batch 128, cosine learning-rate decay, `epochs`
    passes), the other 15 % (a permutation drawn with `seed`) measure `test_accuracy`. file: a cache
    file (atomic write, weights_only load) read instead of training when it holds a valid model.
    Returns the model in eval mode, on the CPU.
    """
    if file is not None:
        cached = _load_classifier(file, DigitClassifier(**classifier_args), verbose)
        if cached is not None:
            return cached
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=gen)
    n_test = x.shape[0] * 15 // 100
    test, train = order[:n_test], order[n_test:]
    torch.manual_seed(seed)
    model = DigitClassifier(**classifier_args)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(train) / 128))
    for epoch in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train), generator=gen)].split(128):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        model.test_accuracy = float((model(x[test]).argmax(1) == y[test]).double().mean())
    if file is not None:
        from .checkpoints import write_atomically
        write_atomically({"state_dict": model.state_dict(), "test_accuracy": model.test_accuracy}, file)
    return model


def train_digit_classifier(size: int = 16, epochs: int = 20, seed: int = 0, cache: bool = True,
                           verbose: bool = False) -> DigitClassifier:
    """Train (or load from the cache) a DigitClassifier on scikit-learn's digits at `size` (8, 16, 32).

    85 % of the 1 797 images train it (Adam, batch 128, cosine learning-rate decay), 15 % measure
    `test_accuracy` (about 0.97-0.99). A few seconds on a CPU. Cached as
    $DIFFUSION_LESSONS_CACHE/digit_classifier-s{size}-e{epochs}-seed{seed}.pt (atomic write,
    weights_only load). Returns the model in eval mode, on the CPU.
    """
    from .datasets import digits
    from .training import cache_dir

    file = cache_dir() / f"digit_classifier-s{size}-e{epochs}-seed{seed}.pt" if cache else None
    x, y = digits(size, return_labels=True)
    model = train_image_classifier(x, y, file, epochs=epochs, seed=seed, verbose=verbose)
    if verbose:
        print(f"digit classifier ({size}x{size}): held-out accuracy {model.test_accuracy:.3f}")
    return model


def train_procedural_classifier(size: int = 32, families=None, n: int = 4000, epochs: int = 5, seed: int = 0,
                                cache: bool = True, verbose: bool = False) -> DigitClassifier:
    """Train (or load) a DigitClassifier that tells the families of datasets.procedural_images apart.

    n images of `size` (drawn with `seed` + 1000, so apart from any set drawn with a small seed), labels
    the family (default: all of datasets.PROCEDURAL_FAMILIES); images are pooled to min(size, 16).
    Near-perfect accuracy is expected: its penultimate features are the embedding of
    classifier_frechet_distance for procedural images. Cached like train_digit_classifier, as
    procedural_classifier-s{size}-f{families}-n{n}-e{epochs}-seed{seed}.pt.
    """
    from .datasets import PROCEDURAL_FAMILIES, procedural_images
    from .training import cache_dir

    families = tuple(PROCEDURAL_FAMILIES if families is None else families)
    if len(families) < 2:
        raise ValueError(f"a classifier needs at least two families to tell apart; got {families}")
    tag = "-".join(families)
    file = cache_dir() / f"procedural_classifier-s{size}-f{tag}-n{n}-e{epochs}-seed{seed}.pt" if cache else None
    x, y = procedural_images(n, size=size, families=families, return_labels=True,
                             generator=torch.Generator().manual_seed(seed + 1000))
    model = train_image_classifier(x, y, file, epochs=epochs, seed=seed, verbose=verbose,
                                   num_classes=len(families), pool=min(size, 16))
    if verbose:
        print(f"procedural classifier ({size}x{size}, {len(families)} families): "
              f"held-out accuracy {model.test_accuracy:.3f}")
    return model


@torch.no_grad()
def classifier_frechet_distance(samples: torch.Tensor, data: torch.Tensor, classifier: DigitClassifier) -> float:
    """Squared Fréchet distance between the classifier's penultimate features of samples and data
    ([N, 1, s, s] images in [-1, 1]); an FID-like score for digit or procedural images (0 for identical
    feature moments). Two independent sets of real images of the same sizes give its noise floor."""
    classifier = classifier.eval()
    device = next(classifier.parameters()).device
    feats = [torch.cat([classifier.features(b.to(device, torch.float32)) for b in x.split(512)])
             for x in (samples, data)]
    return frechet_distance(*feats)
