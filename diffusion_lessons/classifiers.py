"""Noise-conditional classifiers p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

Classifier guidance needs grad_x log p_t(y | x) at every noise level, so the classifier is trained on
noisy inputs: draw (x0, y), t ~ U(t_min, 1) and x_t = alpha_t x0 + sigma_t eps, and minimise the
cross-entropy of classifier(x_t, t) against y. Its minimiser is the noisy class posterior p_t(y | x_t)
(for a mixture: the responsibilities, `dl.exact_classifier`). Two small networks share the time
conditioning of the package's models (nets.py):

* ``TimeClassifier``      -- vectors [N, D]: logits = MLP([x, c(t)]);
* ``ImageTimeClassifier`` -- images [N, C, H, W]: residual blocks with the time added, two stride-2
  convolutions, global average pooling, a linear layer.

``train_noisy_classifier`` trains one with AdamW and caches it like `fit` does (a key hashed from the
settings, the data and the code; atomic writes, weights-only loads, a lock per entry);
``fit_noisy_classifier`` is the same with `fit`'s calling convention and result (the recipes ship one).
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import exclusive_lock, write_atomically
from .nets import _check_dtype, _Conditioning, _groups, _mlp, _ResBlock
from .paths import Path

__all__ = ["ImageTimeClassifier", "TimeClassifier", "classifier_accuracy", "fit_noisy_classifier",
           "train_noisy_classifier"]


class TimeClassifier(nn.Module):
    """Logits [N, num_classes] of vectors x [N, dim] at time t: MLP([x, c(t)]) with depth hidden SiLU layers."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.config = {"class": "TimeClassifier", "dim": dim, "num_classes": num_classes, "hidden": hidden,
                       "depth": depth, "time_dim": time_dim}
        self.dim, self.owner = dim, f"TimeClassifier(dim={dim})"
        self.cond = _Conditioning(self.owner, time_dim, None)
        self.net = _mlp(dim + time_dim, hidden, depth, num_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.owner} expects x of shape [N, {self.dim}]; got {list(x.shape)}")
        _check_dtype(self.owner, x, self)
        return self.net(torch.cat([x, self.cond(t, x, None)], dim=1))


class ImageTimeClassifier(nn.Module):
    """Logits [N, num_classes] of images [N, channels, H, W] at time t (H, W divisible by 4)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, base: int = 32, time_dim: int = 64):
        super().__init__()
        self.config = {"class": "ImageTimeClassifier", "channels": channels, "num_classes": num_classes,
                       "base": base, "time_dim": time_dim}
        self.channels, self.owner = channels, f"ImageTimeClassifier(channels={channels})"
        self.cond = _Conditioning(self.owner, time_dim, None)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.block1, self.down1 = _ResBlock(base, base, time_dim), nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.block2, self.down2 = _ResBlock(2 * base, 2 * base, time_dim), nn.Conv2d(2 * base, 2 * base, 3, stride=2,
                                                                                      padding=1)
        self.block3 = _ResBlock(2 * base, 2 * base, time_dim)
        self.out = nn.Sequential(nn.GroupNorm(_groups(2 * base), 2 * base), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(2 * base, num_classes))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"{self.owner} expects x of shape [N, {self.channels}, H, W] with H, W divisible by 4; "
                             f"got {list(x.shape)}")
        _check_dtype(self.owner, x, self)
        c = self.cond(t, x, None)
        h = self.down1(self.block1(self.inp(x), c))
        h = self.down2(self.block2(h, c))
        return self.out(self.block3(h, c))


_CLASSIFIERS = {"TimeClassifier": TimeClassifier, "ImageTimeClassifier": ImageTimeClassifier}


def _noisy_batch(x, y, path: Path, batch_size: int, t_min: float, gen: torch.Generator):
    rows = torch.randint(len(x), (batch_size,), generator=gen)
    x0 = x[rows]
    t = t_min + (1 - t_min) * torch.rand(batch_size, generator=gen, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    x_t, _ = path.sample(x0, t, eps=eps)
    return x_t, t, y[rows]


def train_noisy_classifier(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path, steps: int = 2000,
                           batch_size: int = 128, lr: float = 2e-3, t_min: float = 1e-3, seed: int = 0,
                           cache: bool = True, name: str = "noisy-classifier") -> nn.Module:
    """Train `classifier` (TimeClassifier or ImageTimeClassifier, fresh weights drawn with `seed`) on noisy
    copies of x [N, ...] with labels y [N]: cross-entropy of classifier(x_t, t) at t ~ U(t_min, 1), AdamW with
    cosine decay of the learning rate, `steps` steps of `batch_size`. Cached in the model cache under a key
    of the settings, the data and the code (like `fit`). Returns the classifier in eval mode on the CPU,
    with .history = {"step": [...], "loss": [...]} (mean loss every steps // 20 steps).
    """
    return fit_noisy_classifier(classifier, (x, y), path, steps=steps, batch_size=batch_size, lr=lr, t_min=t_min,
                                seed=seed, cache=cache, name=name).model


def fit_noisy_classifier(classifier: nn.Module, data, path: Path, target: str = "label", budget: str | None = None,
                         steps: int = 2000, batch_size: int = 128, lr: float = 2e-3, t_min: float = 1e-3,
                         seed: int = 0, cache: bool = True, name: str = "noisy-classifier", progress: bool = False):
    """train_noisy_classifier with `fit`'s calling convention, for the recipes and the shipped weights: data is
    the pair (x, y) and the result a FitResult (the classifier is both .model and .ema: it has no EMA copy), whose
    .config holds the model, the path, target "label", the data's fingerprint and the settings. budget and progress
    are accepted as `fit` accepts them and change nothing (the settings are explicit; training shows no bar)."""
    from . import training  # imported here: training imports the package's modules

    started = time.perf_counter()
    if getattr(classifier, "config", {}).get("class") not in _CLASSIFIERS:
        raise ValueError(f"train_noisy_classifier trains a TimeClassifier or an ImageTimeClassifier; "
                         f"got {type(classifier).__name__}")
    if target != "label":
        raise ValueError(f"a noisy classifier predicts the label (target 'label'); got target {target!r}")
    x, y = data
    if y.shape != (len(x),) or y.is_floating_point():
        raise ValueError(f"labels y must be integers of shape [{len(x)}]; got {list(y.shape)} {y.dtype}")
    settings = {"target": target, "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
                "t_min": float(t_min), "seed": int(seed)}
    code = hashlib.sha256(FilePath(__file__).read_bytes() + FilePath(__file__).with_name("nets.py").read_bytes())
    config = json.loads(json.dumps({"model": classifier.config, "path": path.config(),
                                    "data": training._fingerprint((x, y)), "code": code.hexdigest()[:16], **settings},
                                   sort_keys=True, default=repr))
    file = training._cache_file(config, name) if cache else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = _CLASSIFIERS[classifier.config["class"]](**{k: v for k, v in classifier.config.items() if k != "class"})
    classifier.load_state_dict(fresh.state_dict())

    def result(from_cache):
        classifier.eval()
        return training.FitResult(classifier, classifier, classifier.history, file, time.perf_counter() - started,
                                  from_cache, config)

    if file is None:
        _train(classifier, x, y, path, settings)
        return result(False)
    with exclusive_lock(file, None):
        if file.exists():
            try:
                saved = torch.load(file, map_location="cpu", weights_only=True)
                if saved.get("config") != config:
                    raise ValueError("it holds another run")
                classifier.load_state_dict(saved["state_dict"])
                classifier.history = saved["history"]
                return result(True)
            except Exception as err:  # noqa: BLE001 - a corrupt or foreign file: train again and overwrite it
                warnings.warn(f"ignoring the cached classifier {file} ({err}); training again", stacklevel=2)
        _train(classifier, x, y, path, settings)
        write_atomically({"state_dict": classifier.state_dict(), "config": config, "history": classifier.history},
                         file)
    return result(False)


def _train(classifier, x, y, path, s: dict) -> nn.Module:
    gen = torch.Generator().manual_seed(s["seed"])
    x = x.to(next(classifier.parameters()).dtype)
    opt = torch.optim.AdamW(classifier.parameters(), lr=s["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s["steps"])
    history, window, every = {"step": [], "loss": []}, [], max(1, s["steps"] // 20)
    classifier.train()
    for step in range(1, s["steps"] + 1):
        x_t, t, labels = _noisy_batch(x, y, path, s["batch_size"], s["t_min"], gen)
        loss = F.cross_entropy(classifier(x_t, t), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        window.append(loss.item())
        if step % every == 0 or step == s["steps"]:
            history["step"].append(step)
            history["loss"].append(sum(window) / len(window))
            window = []
    classifier.history = history
    return classifier.eval()


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, path: Path, t: float,
                        seed: int = 0) -> float:
    """Accuracy of argmax classifier(x_t, t) on x_t = alpha_t x + sigma_t eps (one draw of eps with `seed`)."""
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    x_t, _ = path.sample(x, t, eps=eps)
    return float((classifier(x_t, t).argmax(1) == y).double().mean())
