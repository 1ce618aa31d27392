"""Independent float64 numpy references, written without the package.

Tests compare the package's torch code against these, never against its own output.
"""
import numpy as np
from scipy.integrate import quad
from scipy.special import logsumexp

GMM2 = dict(
    pis=np.array([0.3, 0.7]),
    mus=np.array([[-2.0, 0.0], [2.0, 1.0]]),
    covs=np.array([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 1.0]]]),
)


def vp_alpha_sigma(t, bmin=0.1, bmax=20.0):
    """alpha, sigma of Song's VP from the integral of beta by quadrature (not the closed form)."""
    B = quad(lambda s: bmin + s * (bmax - bmin), 0.0, t, epsabs=1e-13, epsrel=1e-12)[0]
    return np.exp(-0.5 * B), np.sqrt(1.0 - np.exp(-B))


def gmm_t(pis, mus, covs, a, s):
    """Law of a x0 + s eps for x0 from the mixture."""
    return pis, a * mus, a**2 * covs + s**2 * np.eye(mus.shape[1])[None]


def gmm_logpdf_score(x, pis, mus, covs):
    """log p [N], score [N, D], responsibilities [N, K], component scores [N, K, D] by explicit inverses."""
    D = x.shape[1]
    P = np.linalg.inv(covs)
    _, logdet = np.linalg.slogdet(covs)
    r = x[:, None, :] - mus[None]
    Pr = np.einsum("kij,nkj->nki", P, r)
    logc = np.log(pis)[None] - 0.5 * (np.einsum("nki,nki->nk", r, Pr) + logdet[None] + D * np.log(2 * np.pi))
    logp = logsumexp(logc, axis=1)
    w = np.exp(logc - logp[:, None])
    sk = -Pr
    return logp, np.einsum("nk,nkd->nd", w, sk), w, sk


def gmm_posterior_mean(x, pis, mus, covs, a, s):
    """E[x0 | x_t = x] component by component: sum_k w_k (mu_k + a Sigma_k C_k^{-1}(x - a mu_k))."""
    _, mt, ct = gmm_t(pis, mus, covs, a, s)
    _, _, w, _ = gmm_logpdf_score(x, pis, mt, ct)
    out = np.zeros_like(x)
    for k in range(len(pis)):
        gain = a * covs[k] @ np.linalg.inv(ct[k])
        out += w[:, k : k + 1] * (mus[k] + (x - a * mus[k]) @ gain.T)
    return out
