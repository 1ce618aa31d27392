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

__all__ = ["batches", "ema_updater", "LossStep", "compile_mode", "to_channels_last", "match_layouts",
           "POOL_SAMPLES", "POOL_BYTES", "COMPILE_MIN_STEPS"]

# On CUDA a sampler is drawn once into a pool of at most this many samples and bytes (see `batches`).
POOL_SAMPLES = 1 << 22
POOL_BYTES = 1 << 28
# compile=None compiles runs of at least this many steps (see `compile_mode`).
COMPILE_MIN_STEPS = 2000


def _sampler(data):
    """draw(n, generator) -> tensor [n, ...] for an object with .sample(n, generator=...) or a callable."""
    if callable(getattr(data, "sample", None)):
        return lambda n, gen: data.sample(n, generator=gen)
    if callable(data):
        return data
    raise ValueError(f"data must be a tensor [N, ...], an object with .sample(n, generator=...) or a callable "
                     f"data(n, generator); got {type(data).__name__}")


def _rows(data: torch.Tensor, batch_size: int, seed: int):
    gen = torch.Generator(device=data.device).manual_seed(seed)
    return (lambda: data[torch.randint(len(data), (batch_size,), generator=gen, device=data.device)]), gen


def batches(data, batch_size: int, device: torch.device, dtype, seed: int, steps: int):
    """(next_batch, generator): next_batch() returns one global minibatch [batch_size, ...] on `device`,
    drawn reproducibly from `seed`; `generator` draws it (its state goes into a resume checkpoint).

    A tensor [N, ...]: copied to the device once; rows drawn uniformly with replacement there.
    An object with .sample(n, generator=...) or a callable data(n, generator): on the CPU, batch_size
    fresh samples each step. On CUDA a draw on the CPU and a copy per step would stall the GPU at
    every step, so the sampler is drawn once into a pool of min(steps * batch_size, POOL_SAMPLES,
    POOL_BYTES / bytes per sample) samples (at least batch_size) on the device, used like a tensor:
    a run of up to POOL_SAMPLES samples sees as many distinct samples as on the CPU.
    """
    if isinstance(data, torch.Tensor):
        if data.dim() < 2 or len(data) == 0:
            raise ValueError(f"data must be a tensor [N, ...] with N >= 1 (N samples); got shape {list(data.shape)}")
        return _rows(data.to(device=device, dtype=dtype), batch_size, seed)
    draw = _sampler(data)
    if device.type != "cuda":
        gen = torch.Generator().manual_seed(seed)
        return (lambda: draw(batch_size, gen).to(device=device, dtype=dtype)), gen
    gen = torch.Generator().manual_seed(seed)
    per_sample = draw(1, torch.Generator().manual_seed(seed))[0].numel() * torch.finfo(dtype).bits // 8
    n = max(batch_size, min(steps * batch_size, POOL_SAMPLES, POOL_BYTES // max(1, per_sample)))
    return _rows(draw(n, gen).to(dtype=dtype).pin_memory().to(device), batch_size, seed)


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


def _loss_of_batch(net, path, target, weighting, t_min):
    def loss_of_batch(x0, u, eps):
        return loss(net, x0, path, target, weighting, t_min, noise=(u, eps))

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
    """step(x0, u, eps) -> the loss (detached): forward and backward on this rank's rows of a global
    batch, leaving the gradients (averaged over the ranks under DDP) in the model's parameters.

    net: the module the loss calls (the model, or its DistributedDataParallel wrapper); params: the
    model's parameters. mode: a torch.compile mode or None. If the compiled loss fails in one of its
    first TRIAL_STEPS calls (compilation, or a CUDA-graph capture at the second or third), the step
    is redone eagerly and training goes on without compiling, with a warning; an error that the eager
    loss raises too is the caller's and propagates.
    """

    TRIAL_STEPS = 3

    def __init__(self, net, params, path, s: dict, device: torch.device, mode: str | None, channels_last: bool):
        self.params, self.channels_last = list(params), channels_last
        self.autocast = device.type == "cuda"  # bf16 on CUDA; the CPU stays in the model's dtype
        self.eager = _loss_of_batch(net, path, s["target"], s["weighting"], s["t_min"])
        self.compiled = None if mode is None else torch.compile(self.eager, mode=mode, dynamic=False)
        self.mode, self.trials = mode, self.TRIAL_STEPS
        # CUDA graphs reuse their output memory at the next replay: keep a copy of the loss
        graphs = mode in ("reduce-overhead", "max-autotune")
        self.keep = (lambda v: v.clone()) if graphs else (lambda v: v)

    def _forward_backward(self, fn, x0, u, eps) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            value = fn(x0, u, eps)
        value.backward()
        return value.detach()

    def __call__(self, x0: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0, u, eps = distributed.shard((x0, u, eps))
        if self.channels_last and x0.dim() == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if self.compiled is None:
            return self._forward_backward(self.eager, x0, u, eps)
        if not self.trials:
            return self.keep(self._forward_backward(self.compiled, x0, u, eps))
        try:
            value = self.keep(self._forward_backward(self.compiled, x0, u, eps))
            self.trials -= 1
            return value
        except Exception as err:  # noqa: BLE001 - any failure of the compiler stack; retried eagerly below
            for p in self.params:
                p.grad = None
            value = self._forward_backward(self.eager, x0, u, eps)  # a genuine error raises here
            why = (str(err).strip().splitlines() or [""])[0][:300]
            warnings.warn(f"torch.compile(mode={self.mode!r}) failed ({type(err).__name__}: {why}); training "
                          f"without compiling (pass compile=False to skip the attempt)", stacklevel=4)
            self.compiled = None
            return value
