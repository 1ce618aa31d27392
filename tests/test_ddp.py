"""fit under torchrun: two CPU processes (gloo backend) train the model one process trains.

Design. Every rank draws the same global batch of 64 samples and its noise from the shared seed and
keeps the rows rank::2 (distributed.py); DistributedDataParallel averages the two gradients. The
mean of two shard means of 32 samples is the mean over the 64, so each step of the two processes is
the step one process takes on the same batch, and the loss curves agree up to the order of the
floating-point additions: the sum over 64 samples is split into two sums of 32 and the gradients
pass through gloo's all-reduce. That reordering changes a step's loss and gradient by about one
float32 ulp (~1e-7 relative), and Adam carries such differences from step to step without
amplifying them much over 60 steps: the measured gaps are 1.3e-7 (relative, losses) and 1.0e-7
(absolute, weights). The test allows 1e-5 for both, 100 times that. Without the gradient averaging
(each rank training on its own shard) the first loss still agrees (it is the average over the
ranks), but from the second step on the curves part by up to 8e-2 and the weights by 8e-2: the
test fails, as checked by disabling DistributedDataParallel in distributed.wrap.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from diffusion_lessons.distributions import gmm2
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import fit, load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")

RUN = dict(target="velocity", steps=60, batch_size=64, lr=3e-3, seed=3, log_every=1, progress=False)
RTOL_LOSS, ATOL_WEIGHTS = 1e-5, 1e-5

WORKER = r'''
"""One rank of a torchrun job: fit, then save what it returned (and what a bad batch size raises)."""
import json, os, sys
import torch
from diffusion_lessons.distributions import gmm2
from diffusion_lessons.nets import TimeMLP
from diffusion_lessons.paths import make_path
from diffusion_lessons.training import fit

out, run = sys.argv[1], json.loads(sys.argv[2])
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
result = fit(TimeMLP(2, hidden=32), gmm2(), make_path("rf"), **run)
again = fit(TimeMLP(2, hidden=32), gmm2(), make_path("rf"), **run)
try:
    fit(TimeMLP(2, hidden=32), gmm2(), make_path("rf"), **{**run, "batch_size": 63})
    error = None
except ValueError as err:
    error = str(err)
torch.save({"history": result.history, "model": result.model.state_dict(), "ema": result.ema.state_dict(),
            "checkpoint": str(result.checkpoint), "from_cache": [result.from_cache, again.from_cache],
            "error": error, "world": torch.distributed.get_world_size()}, os.path.join(out, f"rank{rank}.pt"))
'''


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run WORKER on 2 processes with torchrun (localhost only); return the per-rank results and the cache."""
    tmp = tmp_path_factory.mktemp("ddp")
    script, cache = tmp / "worker.py", tmp / "cache"
    script.write_text(WORKER)
    env = {**os.environ, "DIFFUSION_LESSONS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), str(tmp), json.dumps(RUN)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)], cache


@pytest.fixture(scope="module")
def one_process():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(TimeMLP(2, hidden=32), gmm2(), make_path("rf"), cache=False, **RUN)
    finally:
        torch.set_num_threads(threads)


def test_two_processes_follow_the_loss_curve_of_one(two_ranks, one_process):
    (rank0, rank1), _ = two_ranks
    assert rank0["world"] == 2 and rank0["history"]["step"] == one_process.history["step"] == list(range(1, 61))
    ddp, single = torch.tensor(rank0["history"]["loss"]), torch.tensor(one_process.history["loss"])
    gap = ((ddp - single).abs() / single.abs()).max().item()
    print(f"largest relative gap between the loss curves: {gap:.2e} (tolerance {RTOL_LOSS:g})")
    assert gap < RTOL_LOSS
    assert rank1["history"] == rank0["history"]  # the logged losses are averaged over the ranks


def test_two_processes_end_with_the_weights_of_one(two_ranks, one_process):
    (rank0, rank1), _ = two_ranks
    gaps = [(rank0[part][name] - value).abs().max().item()
            for part, single in (("model", one_process.model), ("ema", one_process.ema))
            for name, value in single.state_dict().items()]
    print(f"largest weight gap: {max(gaps):.2e} (tolerance {ATOL_WEIGHTS:g})")
    for part, single in (("model", one_process.model), ("ema", one_process.ema)):
        for name, value in single.state_dict().items():
            assert torch.equal(rank0[part][name], rank1[part][name]), (part, name)  # every rank returns one model
            torch.testing.assert_close(rank0[part][name], value, rtol=0, atol=ATOL_WEIGHTS)


def test_only_rank_0_writes_the_cache_and_both_read_it(two_ranks):
    (rank0, rank1), cache = two_ranks
    assert rank0["checkpoint"] == rank1["checkpoint"]
    assert os.listdir(cache) == [os.path.basename(rank0["checkpoint"])]  # one entry, no partial, lock or tmp file
    model, _ = load_checkpoint(cache / os.path.basename(rank0["checkpoint"]))
    for name, value in model.state_dict().items():
        assert torch.equal(value, rank0["model"][name])
    assert rank0["from_cache"] == rank1["from_cache"] == [False, True]


def test_a_global_batch_that_does_not_split_evenly_is_refused(two_ranks):
    (rank0, _), _ = two_ranks
    assert "batch_size=63 must be a multiple of the 2 processes" in rank0["error"]
