"""Networks with one signature: ``model(x, t, y=None) -> tensor like x``.

x is a batch [N, ...], t a float or a tensor [N] in [0, 1] (t = 0 data, t = 1 noise), y optional class
labels [N] (integers in 0..num_classes-1, or num_classes for "no label", the null label that
classifier-free guidance needs). What the output means (eps, x0, score or velocity) is decided by
the loss it is trained with, not by the network.

* ``TimeMLP``   -- vectors [N, dim] (2-D toy sets);
* ``UNet``      -- images [N, C, H, W] (16x16, 32x32 digits);
* ``EnergyNet`` -- a scalar energy E(x, t) whose field is -grad_x E: conservative by construction;
* ``FlowMapMLP``, ``FlowMapUNet`` -- two times, ``model(x, t, r, y=None)``: flow maps from t to r <= t.

Every model keeps its constructor arguments in ``model.config`` (``{"class": ..., **kwargs}``), and
``build_model(model.config)`` rebuilds it: that is what checkpoints store.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .paths import expand_time

__all__ = ["TimeEmbedding", "TimeMLP", "UNet", "EnergyNet", "FlowMapMLP", "FlowMapUNet", "build_model", "MODELS"]


class TimeEmbedding(nn.Module):
    """Fourier features of t in [0, 1]: [sin(w_k t), cos(w_k t)], w_k geometric from 1 to max_freq.

    t [N] -> [N, dim]. The low frequencies resolve the coarse shape in t, the high ones the fast
    change of the field near t = 0. No parameters.
    """

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"TimeEmbedding needs an even dim >= 2; got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _batch_time(t, x: torch.Tensor) -> torch.Tensor:
    """t (float or [N]) as a tensor [N] in x's dtype and device; checks t in [0, 1] and the batch size."""
    t = expand_time(t, x)
    return t.expand(x.shape[0]) if t.dim() == 0 else t.reshape(-1)


class _Conditioning(nn.Module):
    """One vector c [N, time_dim] per sample: c = MLP(TimeEmbedding(t)) + Embedding(y)."""

    def __init__(self, owner: str, time_dim: int, num_classes: int | None):
        super().__init__()
        self.owner, self.num_classes = owner, num_classes
        self.embed = TimeEmbedding(time_dim)
        self.mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        # index num_classes is the null label ("unconditional") of classifier-free guidance
        self.labels = nn.Embedding(num_classes + 1, time_dim) if num_classes else None

    def forward(self, t, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        c = self.mlp(self.embed(_batch_time(t, x)))
        if self.labels is None:
            if y is not None:
                raise ValueError(f"{self.owner} was built without num_classes and takes no labels y; "
                                 "build it with num_classes=K to condition on classes")
            return c
        n = x.shape[0]
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
        if y.shape != (n,) or y.is_floating_point() or not bool(((y >= 0) & (y <= self.num_classes)).all()):
            raise ValueError(f"{self.owner} expects labels y: integers of shape [{n}] in 0..{self.num_classes} "
                             f"({self.num_classes} = no label); got shape {list(y.shape)}, dtype {y.dtype}")
        return c + self.labels(y)


def _check_vectors(owner: str, x: torch.Tensor, dim: int, module: nn.Module) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        got = "[N" + "".join(f", {n}" for n in x.shape[1:]) + "]" if x.dim() else "a scalar"
        raise ValueError(f"{owner} expects x of shape [N, {dim}]; got {got}")
    _check_dtype(owner, x, module)


def _check_dtype(owner: str, x: torch.Tensor, module: nn.Module) -> None:
    """x must have the dtype of the weights (the layers would fail deep inside otherwise)."""
    dtype = next(module.parameters()).dtype
    if x.dtype != dtype:
        raise ValueError(f"{owner} has {dtype} weights but x is {x.dtype}: "
                         f"pass x.to({dtype}) or convert the model with model.to({x.dtype})")


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    if depth < 1 or hidden < 1:
        raise ValueError(f"an MLP needs depth >= 1 and hidden >= 1; got depth={depth}, hidden={hidden}")
    layers = [nn.Linear(n_in, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, n_out))


class TimeMLP(nn.Module):
    """MLP field for vectors: out = MLP([x, c(t, y)]), x [N, dim] -> [N, dim]; depth hidden SiLU layers."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 num_classes: int | None = None):
        super().__init__()
        self.config = {"class": "TimeMLP", "dim": dim, "hidden": hidden, "depth": depth,
                       "time_dim": time_dim, "num_classes": num_classes}
        self.dim, self.owner = dim, f"TimeMLP(dim={dim})"
        self.cond = _Conditioning(self.owner, time_dim, num_classes)
        self.net = _mlp(dim + time_dim, hidden, depth, dim)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_vectors(self.owner, x, self.dim, self)
        return self.net(torch.cat([x, self.cond(t, x, y)], dim=1))


class EnergyNet(nn.Module):
    """Conservative field: a scalar energy E(x, t) = MLP([x, c(t)]) and forward(x, t) = -grad_x E(x, t).

    The field is a gradient by construction (its Jacobian is the symmetric -Hessian of E), so it can
    only learn conservative fields, e.g. a score. forward works under torch.no_grad() too (it turns
    gradients on internally) and keeps the graph whenever gradients are enabled by the caller, so the
    loss can be backpropagated through -grad_x E. It cannot run under torch.inference_mode().
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.config = {"class": "EnergyNet", "dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim}
        self.dim, self.owner = dim, f"EnergyNet(dim={dim})"
        self.cond = _Conditioning(self.owner, time_dim, None)
        self.net = _mlp(dim + time_dim, hidden, depth, 1)

    def energy(self, x: torch.Tensor, t) -> torch.Tensor:
        """E(x, t), shape [N]."""
        _check_vectors(self.owner, x, self.dim, self)
        return self.net(torch.cat([x, self.cond(t, x, None)], dim=1)).squeeze(1)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is not None:
            raise ValueError(f"{self.owner} takes no labels y")
        create_graph = torch.is_grad_enabled()  # training, or a caller differentiating the field
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            # the sum over the batch has per-sample gradients, since samples do not interact
            (grad,) = torch.autograd.grad(self.energy(xg, t).sum(), xg, create_graph=create_graph)
        return -grad


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class _ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(c); h = conv(SiLU(GN(h))); return h + skip(x)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.cond = nn.Linear(cond_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.cond(c)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """Small UNet for images [N, channels, H, W] -> same shape; H and W divisible by 2**len(mults).

    Each level i has width base * mults[i]: a residual block (GroupNorm, SiLU, time/label
    conditioning), then a stride-2 convolution; the way up mirrors it with transposed convolutions
    and skip connections; a residual block sits in the middle. cond_channels > 0: the network also
    sees an image `cond` [N, cond_channels, H, W] (e.g. the degraded image of a restoration model),
    stacked onto x at the input: forward(x, t, cond=...).
    """

    def __init__(self, channels: int = 1, base: int = 32, mults=(1, 2), time_dim: int = 64,
                 num_classes: int | None = None, cond_channels: int = 0):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        self.config = {"class": "UNet", "channels": channels, "base": base, "mults": list(mults),
                       "time_dim": time_dim, "num_classes": num_classes}
        if cond_channels:  # only then, so that the configs (and cache keys) of other UNets stay as they were
            self.config["cond_channels"] = int(cond_channels)
        self.channels, self.cond_channels, self.factor = channels, int(cond_channels), 2 ** len(mults)
        self.owner = f"UNet(channels={channels}, mults={mults})"
        self.cond = _Conditioning(self.owner, time_dim, num_classes)
        self.inp = nn.Conv2d(channels + self.cond_channels, base, 3, padding=1)
        widths, width = [base * m for m in mults], base
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        for w in widths:
            self.down.append(_ResBlock(width, w, time_dim))
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            width = w
        self.mid = _ResBlock(width, width, time_dim)
        self.unpool, self.up = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            self.unpool.append(nn.ConvTranspose2d(width, width, 4, stride=2, padding=1))
            self.up.append(_ResBlock(width + w, w, time_dim))
            width = w
        self.out = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, cond: torch.Tensor | None = None):
        self._check_images(x)
        return self._trunk(self._with_condition(x, cond), self.cond(t, x, y))

    def _check_images(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"{self.owner} expects x of shape [N, {self.channels}, H, W] with H, W divisible "
                             f"by {self.factor}; got {list(x.shape)}")
        _check_dtype(self.owner, x, self)

    def _trunk(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The UNet itself, on images x [N, C (+ cond_channels), H, W] with one conditioning vector c [N, time_dim]."""
        h, skips = self.inp(x), []
        for block, pool in zip(self.down, self.pool):
            h = block(h, c)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, c)
        for unpool, block in zip(self.unpool, self.up):
            h = block(torch.cat([unpool(h), skips.pop()], dim=1), c)
        return self.out(h)

    def _with_condition(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x with the condition image stacked on as extra channels (x itself when cond_channels = 0)."""
        if not self.cond_channels:
            if cond is not None:
                raise ValueError(f"{self.owner} was built without cond_channels and takes no condition image")
            return x
        want = [x.shape[0], self.cond_channels, *x.shape[2:]]
        if cond is None or list(cond.shape) != want:
            got = "none" if cond is None else list(cond.shape)
            raise ValueError(f"{self.owner} was built with cond_channels={self.cond_channels} and needs "
                             f"cond of shape {want}; got {got}")
        return torch.cat([x, cond.to(x.dtype)], dim=1)


class _StepConditioning(nn.Module):
    """c_step [N, time_dim] = MLP(TimeEmbedding(t - r)): the step of a flow map from t to r <= t."""

    def __init__(self, owner: str, time_dim: int):
        super().__init__()
        self.owner, self.embed = owner, TimeEmbedding(time_dim)
        self.mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

    def forward(self, t, r, x: torch.Tensor) -> torch.Tensor:
        t, r = _batch_time(t, x), _batch_time(r, x)
        if not torch.compiler.is_compiling() and bool((r > t).any()):
            raise ValueError(f"{self.owner} maps x from time t to an earlier time r <= t (t = 0 data, t = 1 noise); "
                             f"got r > t, e.g. t = {t[r > t][0].item():.4g}, r = {r[r > t][0].item():.4g}")
        return self.mlp(self.embed(t - r))


class FlowMapMLP(TimeMLP):
    """Two-time MLP for vectors: out = MLP([x, c(t, y) + c_step(t - r)]), x [N, dim] -> [N, dim].

    forward(x, t, r, y=None): a flow-map network, trained to give Phi_{t -> r}(x) through a
    parameterisation (e.g. x - (t - r) out, the average velocity of MeanFlow and shortcut models).
    t, r: floats or tensors [N] with r <= t. The step enters as a second embedding added to the
    time's, as in the DiTs of Frans et al. (2024) and Geng et al. (2025).

    max_freq: the highest frequency of both time embeddings (TimeEmbedding). MeanFlow differentiates the
    network in t (its JVP), and high frequencies make that derivative large and its target noisy; a
    low max_freq (e.g. 20) keeps d/dt smooth. Kept out of `config` at its default, so that checkpoints
    written before the setting existed still match.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 num_classes: int | None = None, max_freq: float = 1000.0):
        super().__init__(dim, hidden, depth, time_dim, num_classes)
        self.config["class"], self.owner = "FlowMapMLP", f"FlowMapMLP(dim={dim})"
        self.cond.owner = self.owner
        self.step = _StepConditioning(self.owner, time_dim)
        if float(max_freq) != 1000.0:
            if not (isinstance(max_freq, (int, float)) and 1.0 <= float(max_freq) < float("inf")):
                raise ValueError(f"max_freq must be a finite number >= 1 (the highest time frequency); "
                                 f"got {max_freq!r}")
            self.config["max_freq"] = float(max_freq)
            self.cond.embed = TimeEmbedding(time_dim, float(max_freq))
            self.step.embed = TimeEmbedding(time_dim, float(max_freq))

    def forward(self, x: torch.Tensor, t, r, y: torch.Tensor | None = None) -> torch.Tensor:
        _check_vectors(self.owner, x, self.dim, self)
        return self.net(torch.cat([x, self.cond(t, x, y) + self.step(t, r, x)], dim=1))


class FlowMapUNet(UNet):
    """Two-time UNet for images: forward(x, t, r, y=None), the conditioning c(t, y) + c_step(t - r)
    feeding every residual block (see FlowMapMLP for what the two times mean)."""

    def __init__(self, channels: int = 1, base: int = 32, mults=(1, 2), time_dim: int = 64,
                 num_classes: int | None = None):
        super().__init__(channels, base, mults, time_dim, num_classes)
        self.config["class"] = "FlowMapUNet"
        self.owner = self.cond.owner = f"FlowMapUNet(channels={channels}, mults={tuple(self.config['mults'])})"
        self.step = _StepConditioning(self.owner, time_dim)

    def forward(self, x: torch.Tensor, t, r, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(x)
        return self._trunk(x, self.cond(t, x, y) + self.step(t, r, x))


# Wrappers defined elsewhere register themselves here too (flow_maps.consistency: ConsistencyModel).
MODELS = {"TimeMLP": TimeMLP, "UNet": UNet, "EnergyNet": EnergyNet, "FlowMapMLP": FlowMapMLP,
          "FlowMapUNet": FlowMapUNet}


def build_model(config: dict) -> nn.Module:
    """Rebuild a model from its ``config``: ``{"class": "TimeMLP", "dim": 2, ...}`` (as in ``model.config``)."""
    if not isinstance(config, dict) or config.get("class") not in MODELS:
        name = config.get("class") if isinstance(config, dict) else config
        raise ValueError(f"unknown model class {name!r}; valid classes: {', '.join(MODELS)}")
    kwargs = {k: v for k, v in config.items() if k != "class"}
    try:
        return MODELS[config["class"]](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad config for {config['class']}: {err}") from None
