"""Guidance: conditional sampling with fields made of other fields.

Bayes' rule for the noised laws, p_t(x | y) ∝ p_t(x) p_t(y | x), gives (Song et al. 2021, §5)

    grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x),

the unconditional score plus the gradient of a *noisy* classifier. Guidance scales the second term:

* classifier guidance (Dhariwal & Nichol 2021, `classifier_guidance`)

      s~(x, t) = s(x, t) + lambda grad_x log p_phi(y | x, t),

  with a classifier p_phi trained on noisy inputs (lambda = their ``--classifier_scale``);
* classifier-free guidance (Ho & Salimans 2022, `classifier_free_guidance`): one network trained
  with label dropout predicts both s(x, y) and s(x) = s(x, null); by Bayes' rule their difference is
  the implicit classifier's gradient, and

      s~ = s(x, null) + gamma (s(x, y) - s(x, null)) = (1 + w) s(x, y) - w s(x, null),   gamma = 1 + w.

  **Scale convention.** gamma is diffusers' ``guidance_scale`` and GLIDE's ``guidance_scale`` s;
  Ho & Salimans' paper writes w = gamma - 1 (their w = 0 is the conditional model). gamma = 1 samples
  p(x | y), gamma = 0 samples p(x), gamma > 1 sharpens. Here the argument is ``guidance_scale`` = gamma;
  pass ``w=`` instead to use the paper's number.

The weights of the combination sum to one, and the four prediction targets (eps, x0, score,
velocity) are affine in one another at fixed (x, t) with the same coefficients for every model, so
the combination is the same whatever the network predicts: guiding eps-outputs is guiding scores.
Each function returns a ``field(x, t)`` predicting the model's own target, for ``dl.sample`` or any
solver of the package. Guidance does not sample the "tilted" law p(x | y)^gamma p(x)^(1 - gamma)
unless the conditionals share one covariance (check GD-1): the chapter on guidance measures it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .paths import Path, convert

__all__ = ["classifier_free_guidance", "classifier_gradient", "classifier_guidance", "null_label"]

Field = Callable[[torch.Tensor, object], torch.Tensor]


def null_label(model) -> int:
    """The null label of a class-conditional network: its num_classes K (labels 0..K-1 are classes)."""
    k = (getattr(model, "config", None) or {}).get("num_classes")
    if not k:
        raise ValueError(f"{type(model).__name__} is not class-conditional (no num_classes in its config); "
                         "build it with num_classes=K, or pass null= the label that means 'no class'")
    return int(k)


def _labels(y, n: int, device) -> torch.Tensor:
    """y (an int or a tensor [N]) as a long tensor [n]."""
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.dim() > 1 or (y.dim() == 1 and y.shape[0] != n):
        raise ValueError(f"labels y must be an integer or integers of shape [{n}]; got {list(y.shape)} {y.dtype}")
    return (y.expand(n) if y.dim() == 0 else y).long()


def _guidance_scale(guidance_scale, w) -> float:
    if (guidance_scale is None) == (w is None):
        raise ValueError("give exactly one of guidance_scale (gamma, diffusers' convention) and w "
                         "(Ho & Salimans' convention, gamma = 1 + w)")
    return float(guidance_scale) if w is None else 1.0 + float(w)


def classifier_free_guidance(model, y, guidance_scale: float | None = None, *, w: float | None = None,
                             null: int | None = None) -> Field:
    """field(x, t) = out(x, t, null) + gamma (out(x, t, y) - out(x, t, null)), gamma = guidance_scale = 1 + w.

    model(x, t, y) -> tensor like x: a class-conditional network (any target), or any callable of that
    form. y: the class, an int or a tensor [N]. null: the label meaning "no class" (default: the
    network's num_classes). Both predictions come from one call on the doubled batch [x; x].
    """
    gamma = _guidance_scale(guidance_scale, w)
    null = null_label(model) if null is None else int(null)

    def field(x, t):
        n = x.shape[0]
        labels = torch.cat([_labels(y, n, x.device), torch.full((n,), null, dtype=torch.long, device=x.device)])
        tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() == 1 else t
        conditional, unconditional = model(torch.cat([x, x]), tt, labels).split(n)
        return unconditional + gamma * (conditional - unconditional)

    field.guidance_scale = gamma
    return field


def classifier_gradient(classifier: Callable, x: torch.Tensor, t, y) -> torch.Tensor:
    """grad_x log p_phi(y | x, t) [N, ...] for classifier(x, t) -> logits [N, K] (log-softmax taken here).

    Gradients are switched on inside, so this works under torch.no_grad(); the result is detached.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(xg, t), dim=1)
        chosen = log_probs.gather(1, _labels(y, x.shape[0], x.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, xg)
    return grad


def classifier_guidance(model: Field, classifier: Callable, y, scale: float, path: Path, target: str = "eps") -> Field:
    """field(x, t): the model's prediction with its score moved by scale * grad_x log p_phi(y | x, t).

    s~ = s + scale grad log p_phi (Dhariwal & Nichol 2021; their DDIM form eps~ = eps - sqrt(1 - abar)
    scale grad log p_phi is the same statement for an eps-model, since s = -eps / sigma). model(x, t)
    predicts `target` (unconditional, e.g. a conditional network with its null label); classifier(x, t)
    returns logits [N, K] of a classifier trained on noisy inputs x_t (dl.exact_classifier for a
    mixture). scale = 1 is the score of p_t(x | y); larger scales sharpen.
    """

    def field(x, t):
        score = convert(model(x, t), target, "score", x, t, path)
        guided = score + scale * classifier_gradient(classifier, x, t, y).to(score.dtype)
        return convert(guided, "score", target, x, t, path)

    return field
