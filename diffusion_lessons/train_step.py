"""One optimisation step of `fit`, made fast on the hardware at hand.

`fit` (training.py) repeats one loop: draw a global batch x0 and its noise (u, eps); keep this
process's rows (distributed.py); forward and backward; AdamW; EMA. This module holds what differs
between devices, so that the loop stays one loop:

* CPU: float32, eager, a fresh batch drawn each step. This is the arithmetic that a resumed run
  repeats bit for bit.
* CUDA: the data kept on the device (`batches`), bf16 autocast, fused AdamW, the loss compiled
  with torch.compile, by default with CUDA graphs for long runs (`compile_mode`, `LossStep`, with
  an eager fallback), channels_last weights for convolutional models, one fused update of the EMA,
  and no host synchronisation of fit's own between two logging steps (the losses stay on the
  device until they are logged).

The step is launch-bound for the package's small models: on an H100 (torch 2.11) an eager step of
TimeMLP(2) costs ~4.5 ms at batch 512 and at 4096 alike, one of UNet(base=32) on 16x16 images ~17 ms,
nearly all of it kernel launches and host synchronisations. CUDA graphs replay the compiled forward
and backward passes as two launches (~1.9 and ~2.8 ms per step). They pay only once the loss traces
as one graph: `paths.as_time` checks that times lie in [0, 1], a host synchronisation and a graph
break per call unless it skips the check while torch.compile traces.
"""
from __future__ import annotations

import types
import warnings

import torch
import torch.nn as nn

from . import distributed
from .objectives import loss

__all__ = ["batches", "check_labels", "drop_labels", "ema_updater", "LossStep", "compile_mode", "to_channels_last", "match_layouts",
           "POOL_SAMPLES", "POOL_BYTES", "COMPILE_MIN_STEPS"]

# On CUDA a sampler is drawn once into a pool of at most this many samples and bytes (see `batches`).
POOL_SAMPLES = 1 << 22
POOL_BYTES = 1 << 28
# compile=None compiles runs of at least this many steps (see `compile_mode`).
COMPILE_MIN_STEPS = 2000


def _sampler(data, num_classes: int | None):
    """draw(n, generator) -> x [n, ...], or (x, labels [n]) for a class-conditional model (num_classes K),
    from an object with .sample(n, generator=..., return_labels=...) or a callable data(n, generator)."""
    if callable(getattr(data, "sample", None)):
        if num_classes:
            return lambda n, gen: data.sample(n, generator=gen, return_labels=True)
        return lambda n, gen: data.sample(n, generator=gen)
    if callable(data):
        return data
    raise ValueError(f"data must be a tensor [N, ...], a pair (x [N, ...], labels [N]) for a class-conditional model, "
                     f"an object with .sample(n, generator=...) or a callable data(n, generator); got {type(data).__name__}")


def check_labels(batch, num_classes: int | None):
    """Whether what the data gives matches the model: x alone for an unconditional model, a pair
    (x [N, ...], labels [N], integers in 0..K-1) for one built with num_classes = K. Returns batch."""
    pair = isinstance(batch, (tuple, list))
    if not num_classes:
        if pair:
            raise ValueError("the data carry class labels but the model was built without num_classes; build it with "
                             "num_classes=K to train a class-conditional model, or pass the images alone")
        return batch
    if not pair or len(batch) != 2:
        raise ValueError(f"a class-conditional model (num_classes={num_classes}) needs labelled data: a pair "
                         f"(x [N, ...], labels [N]), a sampler with .sample(n, generator=..., return_labels=True) "
                         f"or a callable data(n, generator) returning (x, labels)")
    x, y = batch
    if (not isinstance(y, torch.Tensor) or y.is_floating_point() or y.shape != (len(x),)
            or not bool(((y >= 0) & (y < num_classes)).all())):
        got = type(y).__name__
        if isinstance(y, torch.Tensor):
            span = f", values {int(y.min())}..{int(y.max())}" if y.numel() and not y.is_floating_point() else ""
            got = f"shape {list(y.shape)}, dtype {y.dtype}{span}"
        raise ValueError(f"labels must be integers of shape [{len(x)}] in 0..{num_classes - 1}; got {got}")
    return batch


def _rows(data: tuple, batch_size: int, seed: int):
    """next_batch() -> rows drawn with replacement from each tensor of `data` (the same rows of each)."""
    device = data[0].device
    gen = torch.Generator(device=device).manual_seed(seed)

    def next_batch():
        rows = torch.randint(len(data[0]), (batch_size,), generator=gen, device=device)
        return data[0][rows] if len(data) == 1 else tuple(d[rows] for d in data)

    return next_batch, gen


def _on_device(batch, device, dtype, pin: bool = False):
    """x (floating, in `dtype`) and labels (as they are) moved to `device`; batch: x or (x, labels)."""
    def move(v, cast):
        v = v.to(dtype=dtype) if cast else v
        return (v.pin_memory() if pin else v).to(device)
    if isinstance(batch, (tuple, list)):
        return (move(batch[0], True), move(batch[1], False))
    return move(batch, True)


def batches(data, batch_size: int, device: torch.device, dtype, seed: int, steps: int, num_classes: int | None = None):
    """(next_batch, generator): next_batch() returns one global minibatch [batch_size, ...] on `device`,
    drawn reproducibly from `seed`; `generator` draws it (its state goes into a resume checkpoint).

    A tensor [N, ...]: copied to the device once; rows drawn uniformly with replacement there.
    An object with .sample(n, generator=...) or a callable data(n, generator): on the CPU, batch_size
    fresh samples each step. On CUDA a draw on the CPU and a copy per step would stall the GPU at
    every step, so the sampler is drawn once into a pool of min(steps * batch_size, POOL_SAMPLES,
    POOL_BYTES / bytes per sample) samples (at least batch_size) on the device, used like a tensor:
    a run of up to POOL_SAMPLES samples sees as many distinct samples as on the CPU.
    Class-conditional models (num_classes = K): the data are a pair (x [N, ...], labels [N]) of
    tensors, a sampler asked for .sample(n, generator=..., return_labels=True), or a callable returning
    (x, labels); next_batch() then returns the pair (x [batch_size, ...], labels [batch_size]).
    """
    if isinstance(data, (torch.Tensor, tuple, list)):
        tensors = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        if not all(isinstance(v, torch.Tensor) for v in tensors) or tensors[0].dim() < 2 or len(tensors[0]) == 0:
            shapes = [list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in tensors]
            raise ValueError(f"data must be a tensor [N, ...] with N >= 1 (N samples), or a pair (x [N, ...], labels [N]); "
                             f"got shape {shapes[0] if len(shapes) == 1 else shapes}")
        check_labels(tensors if isinstance(data, (tuple, list)) else data, num_classes)
        return _rows(tuple(_on_device(tensors, device, dtype)) if len(tensors) == 2 else
                     (_on_device(tensors[0], device, dtype),), batch_size, seed)
    draw = _sampler(data, num_classes)
    gen = torch.Generator().manual_seed(seed)
    if device.type != "cuda":
        checked = []

        def next_batch():
            batch = draw(batch_size, gen)
            if not checked:  # the first batch tells whether the sampler gives what the model needs
                check_labels(batch, num_classes)
                checked.append(True)
            return _on_device(batch, device, dtype)

        return next_batch, gen
    first = check_labels(draw(1, torch.Generator().manual_seed(seed)), num_classes)
    per_sample = (first[0] if num_classes else first)[0].numel() * torch.finfo(dtype).bits // 8
    n = max(batch_size, min(steps * batch_size, POOL_SAMPLES, POOL_BYTES // max(1, per_sample)))
    pool = _on_device(draw(n, gen), device, dtype, pin=True)
    return _rows(pool if num_classes else (pool,), batch_size, seed)


def drop_labels(y: torch.Tensor, p: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Label dropout (Ho & Salimans 2022): each label replaced by the null label `num_classes` with
    probability p, one uniform draw per label from `generator`, so that one network learns both the
    conditional and the unconditional model that classifier-free guidance combines."""
    keep = torch.rand(y.shape, generator=generator, device=y.device) >= p
    return torch.where(keep, y, torch.full_like(y, num_classes))


def ema_updater(ema: nn.Module, model: nn.Module):
    """update(decay): ema <- decay ema + (1 - decay) model for every parameter, buffers copied.

    One foreach call over all parameters (a fused kernel on CUDA; on the CPU the same lerp per
    tensor as a loop); the parameter lists are built once.
    """
    targets, sources = list(ema.parameters()), list(model.parameters())
    buffers = list(ema.buffers()), list(model.buffers())

    @torch.no_grad()
    def update(decay: float) -> None:
        torch._foreach_lerp_(targets, sources, 1 - decay)
        if buffers[0]:
            torch._foreach_copy_(*buffers)

    return update


def _convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def to_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Store a convolutional model's 4-D weights channels_last on CUDA (cuDNN's fast layout for
    bf16); return whether it did. `model.to(memory_format=torch.contiguous_format)` undoes it."""
    if device.type != "cuda" or not _convolutional(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer moment its parameter's memory layout (a restored state may have another)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _loss_of_batch(net, path, target, weighting, t_min, objective=None, ema=None):
    def loss_of_batch(x0, *noise, y=None):
        if objective is not None:  # fit(..., objective=...): its loss, with the EMA copy as target network
            return objective.loss(net, ema, x0, *noise)
        return loss(net, x0, path, target, weighting, t_min, y=y, noise=noise)

    # A fresh code object per run: dynamo keeps compiled graphs per code object and stops compiling
    # one after torch._dynamo.config.cache_size_limit versions, which a process training many models
    # would reach (every model is another version).
    return types.FunctionType(loss_of_batch.__code__.replace(), loss_of_batch.__globals__, "loss_of_batch",
                              None, loss_of_batch.__closure__)


def compile_mode(compile, device: torch.device, steps: int) -> str | None:
    """The torch.compile mode for fit's `compile` argument, or None for eager.

    None (auto): "reduce-overhead" (CUDA graphs) for a run of at least COMPILE_MIN_STEPS steps on one
    CUDA device, else eager. Compiling costs ~20 s for a small model when the compiler's cache is
    cold and saves ~3 ms (TimeMLP) to ~14 ms (UNet) per step on an H100, so short runs are faster
    eager; under DDP the automatic choice is eager (CUDA graphs and DDP's hooks are not combined
    here: pass a mode to try). True: torch.compile's default mode; False: eager; a string: that mode.
    """
    if compile is None:
        single = distributed.rank_and_world()[1] == 1
        return "reduce-overhead" if device.type == "cuda" and single and steps >= COMPILE_MIN_STEPS else None
    if compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str):
        return compile
    raise ValueError(f"compile must be None (automatic), True, False or a torch.compile mode such as "
                     f"'reduce-overhead'; got {compile!r}")


class LossStep:
    """step(x0, *noise, y=None) -> the loss (detached): forward and backward on this rank's rows of a global
    batch x0 and its noise ((u, eps), or what fit's objective drew), with y its class labels for a
    class-conditional model, leaving the gradients (averaged over the ranks under DDP) in the model's parameters.

    net: the module the loss calls (the model, or its DistributedDataParallel wrapper); params: the
    model's parameters. mode: a torch.compile mode or None. If the compiled loss fails in one of its
    first TRIAL_STEPS calls (compilation, or a CUDA-graph capture at the second or third), the step
    is redone eagerly and training goes on without compiling, with a warning; an error that the eager
    loss raises too is the caller's and propagates.
    """

    TRIAL_STEPS = 3

    def __init__(self, net, params, path, s: dict, device: torch.device, mode: str | None, channels_last: bool,
                 ema=None):
        self.params, self.channels_last = list(params), channels_last
        self.autocast = device.type == "cuda"  # bf16 on CUDA; the CPU stays in the model's dtype
        self.eager = _loss_of_batch(net, path, s["target"], s["weighting"], s["t_min"], s.get("objective"), ema)
        self.compiled = None if mode is None else torch.compile(self.eager, mode=mode, dynamic=False)
        self.mode, self.trials = mode, self.TRIAL_STEPS
        # CUDA graphs reuse their output memory at the next replay: keep a copy of the loss
        graphs = mode in ("reduce-overhead", "max-autotune")
        self.keep = (lambda v: v.clone()) if graphs else (lambda v: v)

    def _forward_backward(self, fn, x0, *noise, y=None) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            value = fn(x0, *noise, y=y)
        value.backward()
        return value.detach()

    def __call__(self, x0: torch.Tensor, *noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x0, *noise = distributed.shard((x0, *noise))
        y = None if y is None else distributed.shard((y,))[0]
        if self.channels_last and x0.dim() == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if self.compiled is None:
            return self._forward_backward(self.eager, x0, *noise, y=y)
        if not self.trials:
            return self.keep(self._forward_backward(self.compiled, x0, *noise, y=y))
        try:
            value = self.keep(self._forward_backward(self.compiled, x0, *noise, y=y))
            self.trials -= 1
            return value
        except Exception as err:  # noqa: BLE001 - any failure of the compiler stack; retried eagerly below
            for p in self.params:
                p.grad = None
            value = self._forward_backward(self.eager, x0, *noise, y=y)  # a genuine error raises here
            why = (str(err).strip().splitlines() or [""])[0][:300]
            warnings.warn(f"torch.compile(mode={self.mode!r}) failed ({type(err).__name__}: {why}); training "
                          f"without compiling (pass compile=False to skip the attempt)", stacklevel=4)
            self.compiled = None
            return value
