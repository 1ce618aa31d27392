"""Benchmarks: training throughput, sampler accuracy per NFE, memory, and the time to run the book.

    python -m diffusion_lessons.bench [--device cpu|cuda] [--quick] [--only NAME ... | --all] [--out FILE]

* train    -- samples/s of `dl.fit` against a plain reference loop written the way public tutorials
              write it (DataLoader over a TensorDataset with shuffle, float32, no compile, no autocast,
              plain AdamW, the loss inline), same model, data, batch size, device and steps, one run.
* samplers -- mean ||x - x_ref|| per NFE on GMM2 with the exact score: every method of dl.sample on the
              uniform, log-SNR and Karras grids, the NFE each needs to match 1000-step Euler, and the
              teleport start; x_ref from a DOP853 solve (rtol 1e-10) of the same PF-ODE (bench_samplers.py).
* memory   -- peak memory and time of a UNet training step (`fit`) against batch size and image size.
* book     -- seconds to execute every chapter of _toc.yml at DIFFUSION_LESSONS_BUDGET=smoke on the
              CPU, each in a fresh kernel with a fresh model cache (needs nbclient). It takes longer
              than the rest together, so it runs only when asked: --all, or --only book.

Rates exclude warm-up: `fit` is a black box, so its rate is the difference of two calls,
(W + N steps) - (W steps), after a first call that pays for compilation; the reference loop is timed
directly after W warm-up steps. Clocks are read after torch.cuda.synchronize(). These are
measurements, not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FilePath

import torch

BENCHES = ("train", "samplers", "memory", "book")
ROOT = FilePath(__file__).resolve().parent.parent  # the repository (holds _toc.yml and notebooks/)
LR = 1e-3


# -- clocks and tables ----------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    """Seconds that fn() takes, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _table(title: str, headers: list[str], rows: list[list], note: str = "") -> str:
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines + ([""] + [note] if note else [])) + "\n"


def _num(value: float, fmt: str, suffix: str = "") -> str:
    """A measured number, or 'noise' where differencing two timings gave no usable value."""
    return "noise" if not math.isfinite(value) else f"{value:{fmt}}{suffix}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def header(device: torch.device, argv: list[str]) -> str:
    command = " ".join(["python -m diffusion_lessons.bench", shlex.join(argv)]).strip()
    return (f"## diffusion-lessons bench\n\n- date: {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"- device: {_device_name(device)}\n- torch {torch.__version__}, python {platform.python_version()}\n"
            f"- command: `{command}`\n")


# -- a. training throughput -----------------------------------------------------------------------
def _vp_alpha_sigma(t: torch.Tensor):
    """Song's VP written inline, as a tutorial would: B = 0.1 t + 9.95 t^2, alpha = e^{-B/2}, sigma = sqrt(1 - e^{-B})."""
    B = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
    return torch.exp(-0.5 * B), torch.sqrt(1.0 - torch.exp(-B))


def reference_loop(model, data: torch.Tensor, batch_size: int, steps: int, warmup: int, device) -> tuple[float, float]:
    """The tutorial loop: DataLoader(TensorDataset(data), shuffle=True), eps-prediction on the VP path,
    float32, plain AdamW, the loss inline. Returns (seconds of `warmup` steps, seconds of `steps` steps)."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(data), batch_size=batch_size, shuffle=True, drop_last=True)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def batches():
        while True:
            for (x0,) in loader:
                yield x0

    stream = batches()

    def run(n):
        for _ in range(n):
            x0 = next(stream).to(device)
            t = torch.rand(x0.shape[0], device=device) * (1 - 1e-3) + 1e-3
            eps = torch.randn_like(x0)
            alpha, sigma = (v.view(-1, *[1] * (x0.dim() - 1)) for v in _vp_alpha_sigma(t))
            loss = ((model(alpha * x0 + sigma * eps, t) - eps) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return _timed(lambda: run(warmup), device), _timed(lambda: run(steps), device)


def fit_rate(make_model, data, batch_size: int, steps: int, warmup: int, device) -> dict:
    """`fit` for W + N steps in one call, logging every W steps; rate = batch * the steps per second between
    the log at step W and the last one (FitResult.steps_per_second: each log reads the loss back to the
    host, so the clock is synchronised), which leaves setup, compilation and the first W steps out.
    'call' = the whole call's seconds; 'fixed' = call - (W + N) / steps per second (setup and compilation)."""
    from .paths import VP
    from .training import fit

    # On CUDA, time fit as a real (gpu-budget, >= 2000 steps) run uses it: compiled with CUDA graphs.
    # Left to itself, fit would not compile these short timing calls (compiling costs ~20 s once).
    mode = "reduce-overhead" if device.type == "cuda" else None
    out = {}

    def run():
        out["fit"] = fit(make_model(), data, VP(), "eps", steps=warmup + steps, batch_size=batch_size, lr=LR,
                         cache=False, progress=False, device=device, compile=mode, log_every=warmup)

    call = _timed(run, device)
    per_second = out["fit"].steps_per_second(after=warmup)
    return {"rate": batch_size * per_second, "first": call, "overhead": call - (warmup + steps) / per_second}


def _train_cases(device: torch.device, quick: bool) -> list[dict]:
    from .datasets import digits
    from .distributions import toy_data
    from .nets import TimeMLP, UNet

    gpu = device.type == "cuda"
    n_moons = 4096 if quick else 2**17 if gpu else 2**15
    moons = lambda: toy_data("moons", n_moons, torch.Generator().manual_seed(0))
    mlp, unet = (lambda: TimeMLP(2)), (lambda: UNet())
    if gpu:
        cases = [("TimeMLP(2), moons", mlp, moons, 512, 300), ("TimeMLP(2), moons", mlp, moons, 16384, 200),
                 ("UNet, digits 16x16", unet, lambda: digits(16), 256, 300),
                 ("UNet, digits 32x32", unet, lambda: digits(32), 256, 300)]
        warmup = 20
    else:
        cases = [("TimeMLP(2), moons", mlp, moons, 512, 60), ("TimeMLP(2), moons", mlp, moons, 8192, 15),
                 ("UNet, digits 16x16", unet, lambda: digits(16), 32, 6)]
        warmup = 2
    if quick:
        cases, warmup = [("TimeMLP(2), moons", mlp, moons, 256, 2)], 1
    return [dict(name=n, make=m, data=d(), batch=b, steps=s, warmup=warmup) for n, m, d, b, s in cases]


def bench_train(device: torch.device, quick: bool) -> str:
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (seconds)
    rows = []
    for case in _train_cases(device, quick):
        torch.manual_seed(0)
        ours = fit_rate(case["make"], case["data"], case["batch"], case["steps"], case["warmup"], device)
        torch.manual_seed(0)
        warm, timed = reference_loop(case["make"](), case["data"], case["batch"], case["steps"], case["warmup"], device)
        ref = case["batch"] * case["steps"] / timed
        rows.append([case["name"], case["batch"], case["steps"], _num(ours["rate"], ",.0f"), f"{ref:,.0f}",
                     _num(ours["rate"] / ref, ".2f", "x"), f"{ours['first']:.2f}", _num(ours["overhead"], ".2f"),
                     f"{warm:.2f}"])
    note = ("fit: eps target, VP, EMA, its own device placement/autocast; on CUDA compile='reduce-overhead' (what fit "
            "picks itself for runs of >= 2000 steps); one call of W + N steps, rate over the N steps after "
            "step W (FitResult.steps_per_second). reference: DataLoader(shuffle) + float32 + plain AdamW, timed after W warm-up steps "
            f"(W = {case['warmup']}). 'fit call' = the whole call; 'fit fixed' = setup + compilation (call - (W + N) steps at the rate).")
    return _table("Training throughput: fit vs a tutorial loop", [
        "case", "batch", "timed steps", "fit samples/s", "reference samples/s", "ratio", "fit call (s)",
        "fit fixed (s)", "reference warm-up (s)"], rows, note)


# -- b. sampler accuracy per NFE ------------------------------------------------------------------
def bench_samplers(device: torch.device, quick: bool) -> str:
    """Every method of dl.sample on every grid (bench_samplers.py); CPU float64 whatever --device says."""
    from .bench_samplers import sampler_tables

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [500, 2] tensors: a second intra-op thread only adds contention
    try:
        return sampler_tables(quick, _table)
    finally:
        torch.set_num_threads(threads)


# -- c. memory and time of a UNet training step ---------------------------------------------------
def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def unet_step(size: int, batch: int, steps: int, device: torch.device) -> dict:
    """fit(UNet(), digits(size)) for 1, 1 and 1 + steps steps: peak memory of the first call (CUDA: max
    allocated; CPU: growth of the resident set's high-water mark, where /proc allows resetting it),
    seconds per step by differencing the other two."""
    from .datasets import digits
    from .nets import UNet
    from .paths import VP
    from .training import fit

    data = digits(size)
    call = lambda n: _timed(lambda: fit(UNet(), data, VP(), "eps", steps=n, batch_size=batch, lr=LR,
                                        cache=False, progress=False, device=device), device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call(1)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM, the resident high-water mark (Linux >= 4.0)
            base = _rss_bytes("VmRSS")
        except OSError:
            base = None
        call(1)
        peak = None if base is None else _rss_bytes("VmHWM") - base
    short, long = call(1), call(1 + steps)
    step = (long - short) / steps
    return {"peak": peak, "step": step if step > 0 else None}


def bench_memory(device: torch.device, quick: bool) -> str:
    if device.type == "cuda":
        grid, steps = [(16, 256), (16, 1024), (32, 256), (32, 1024)], 20
    else:
        grid, steps = [(8, 16), (8, 64), (16, 16), (16, 64), (32, 16)], 4
    if quick:
        grid, steps = [(8, 8)], 1
    rows = []
    for size, batch in grid:
        if device.type == "cuda" or quick:
            r = unet_step(size, batch, steps, device)
        else:  # a fresh process per point: the resident set of this one remembers earlier allocations
            code = f"import json, torch; from diffusion_lessons.bench import unet_step; " \
                   f"print(json.dumps(unet_step({size}, {batch}, {steps}, torch.device('cpu'))))"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if out.returncode:
                raise RuntimeError(f"the memory probe for {size}x{size}, batch {batch} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
        peak = "n/a" if r["peak"] is None else f"{r['peak'] / 2**20:,.0f}"
        step = math.nan if r["step"] is None else r["step"]
        rows.append([f"{size}x{size}", batch, _num(1000 * step, ",.1f"), _num(batch / step, ",.0f"), peak])
    what = "torch.cuda.max_memory_allocated minus what was allocated before" if device.type == "cuda" else \
        "growth of the process's resident high-water mark (VmHWM after /proc/self/clear_refs) during the first call"
    note = (f"UNet() (base 32, mults (1, 2)) trained by dl.fit on digits; time per step: (T({1 + steps} steps) - "
            f"T(1 step)) / {steps}; peak memory: {what}.")
    return _table("UNet training step: time and peak memory", [
        "image", "batch", "ms/step", "samples/s", "peak memory (MiB)"], rows, note)


# -- d. the book ------------------------------------------------------------------------------------
def chapters(root: FilePath = ROOT) -> list[FilePath]:
    """The notebooks listed (not commented out) in root's _toc.yml, in order (book/execute_chapters.py uses it too)."""
    toc = root / "_toc.yml"
    if not toc.exists():
        return []
    files = [line.split("file:", 1)[1].strip() for line in toc.read_text().splitlines()
             if line.strip().startswith("- file:") and "notebooks/" in line]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def bench_book(device: torch.device, quick: bool) -> str:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        return _table("The book at the smoke budget", ["chapter", "seconds"], [],
                      "skipped: nbclient is not installed here (pip install -e '.[book]' brings it).")
    rows, total = [], 0.0
    for notebook in chapters():
        with tempfile.TemporaryDirectory(prefix="dl-bench-cache-") as cache:
            env = {**os.environ, "DIFFUSION_LESSONS_BUDGET": "smoke", "DIFFUSION_LESSONS_CACHE": cache,
                   "MPLBACKEND": "Agg"}
            nb = nbformat.read(notebook, as_version=4)
            client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": str(notebook.parent)}})
            start, status = time.perf_counter(), "ok"
            try:
                client.execute(env=env)
            except Exception as err:  # a failing chapter is reported, not fatal to the bench
                status = f"failed: {type(err).__name__}"
            seconds = time.perf_counter() - start
        total += seconds
        rows.append([notebook.stem, f"{seconds:.1f}", status])
        print(f"  {notebook.stem}: {seconds:.1f} s, {status}", file=sys.stderr, flush=True)
    rows.append(["**total**", f"**{total:.1f}**", ""])
    note = ("Each chapter in a fresh kernel (nbclient) with DIFFUSION_LESSONS_BUDGET=smoke and an empty temporary "
            "model cache, so every model is trained; includes kernel start-up. The chapters pick their own device "
            "(--device does not apply).")
    return _table("The book at the smoke budget", ["chapter", "seconds", "status"], rows, note)


RUNNERS = {"train": bench_train, "samplers": bench_samplers, "memory": bench_memory, "book": bench_book}


# -- the command --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffusion-lessons bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the bench itself (seconds)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(BENCHES)}")
    which.add_argument("--all", action="store_true", help="also time the book (default: all but the book)")
    p.add_argument("--out", metavar="FILE", help="also append the tables (markdown) to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    unknown = [name for name in args.only or [] if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; valid benchmarks: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    names = args.only or [b for b in BENCHES if b != "book" or args.all]
    try:  # opened before anything runs: a file that cannot be written fails now, not after the benchmarks
        out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    except OSError as err:
        print(f"diffusion-lessons bench: error: cannot write --out {args.out}: {err.strerror or err}; "
              "give a file in a folder you can write to", file=sys.stderr)
        return 2
    try:
        _run(names, device, args.quick, argv, out)
    finally:
        if out is not None:
            out.close()
    return 0


def _run(names: list[str], device: torch.device, quick: bool, argv: list[str], out) -> None:
    """Run the benchmarks `names`, printing each table and appending it to the open file `out` (or None)."""
    started = time.perf_counter()

    def emit(text: str) -> None:  # printed and appended as it comes, so a run cut short keeps its tables
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")
            out.flush()

    emit(header(device, argv))
    for name in names:
        t0 = time.perf_counter()
        table = RUNNERS[name](device, quick)
        emit(table + f"\n({name}: {time.perf_counter() - t0:.1f} s)\n")
    emit(f"total wall time: {time.perf_counter() - started:.1f} s\n")


if __name__ == "__main__":
    sys.exit(main())
