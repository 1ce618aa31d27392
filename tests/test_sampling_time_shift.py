"""The Time-Shift sampler: its selection rule against an argmin written here over numpy's linear-DDPM abar (FS-4),
its two code paths, and the exposure-bias demonstration (FS-4b, reported, no threshold)."""
import numpy as np
import pytest
import torch

import diffusion_lessons as dl

F64 = {"dtype": torch.float64}
pytestmark = pytest.mark.usefixtures("one_thread")


def _noise_var():
    """1 - abar_c, c = 0..999, linear betas 1e-4 -> 0.02 (the code's 0-based steps), numpy."""
    return 1 - np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))


def test_fs4_selection_rule():
    """Check FS-4: pixel variance 0.9472, next grid step 500, w = 40, t_c = 300: the DDIM/PNDM/ADM window
    (+-floor(w/2) around 500) gives its edge 520; the DEIS window (+-w) gives 537; below the cutoff (250) nothing
    moves. The expected steps are the argmin over numpy's abar, and must be the integers 520, 537, 250."""
    schedule = dl.ddpm.DDPMSchedule.linear()
    noise = _noise_var()
    v = 0.9472
    half = int(np.argmin((v - noise[480:521]) ** 2)) + 480
    full = int(np.argmin((v - noise[460:541]) ** 2)) + 460
    assert (half, full) == (520, 537)
    assert int(dl.time_shift_step(v, 500, 40 // 2, 300, schedule)) == half
    assert int(dl.time_shift_step(v, 500, 40, 300, schedule)) == full
    assert int(dl.time_shift_step(v, 250, 20, 300, schedule)) == 250
    many = dl.time_shift_step(torch.tensor([0.9472, float(noise[495])]), 500, 20, 300, schedule)
    assert many.tolist() == [520, 495]
    print("FS-4: 1 - abar at 500, 520, 537:", noise[500], noise[520], noise[537])


def test_without_shift_it_is_ddim_on_the_chain():
    """shift=False is DDIM on the grid {(c + 1) / N}: dl.sample("ddim") on dl.DDPMPath, the same to 1e-12."""
    schedule = dl.ddpm.DDPMSchedule.linear()
    path = dl.DDPMPath(schedule)
    data = dl.Gaussian(torch.zeros(4, **F64), 0.3 * torch.eye(4, **F64))
    model = dl.exact_prediction(data, path, "eps")
    grid = dl.time_shift_grid(10, schedule)
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), **F64)
    plain = dl.time_shift_sample(model, schedule, x_T, grid, shift=False)
    ref = dl.sample(model, path, x_T, [(c + 1) / 1000 for c in grid] + [0.0], "ddim")
    assert plain.nfe == ref.nfe == 10
    assert float((plain.x - ref.x).abs().max()) < 1e-12


@pytest.mark.parametrize("variant", ["ddim", "deis"])
def test_time_shift_moves_only_above_the_cutoff(variant):
    """With the cutoff above every grid step nothing is shifted; with a low cutoff a mis-scaled model's samples change;
    the "ddim" variant (which moves the target of a step) never shifts the first step, "deis" (the network's time)
    shifts every call."""
    schedule = dl.ddpm.DDPMSchedule.linear()
    path = dl.DDPMPath(schedule)
    data = dl.Gaussian(torch.zeros(64, **F64), 0.1 * torch.eye(64, **F64))
    exact = dl.exact_prediction(data, path, "eps")
    model = lambda x, t: 1.1 * exact(x, t)
    grid = dl.time_shift_grid(10, schedule)
    x_T = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), **F64)
    plain = dl.time_shift_sample(model, schedule, x_T, grid, shift=False).x
    off = dl.time_shift_sample(model, schedule, x_T, grid, window=40, cutoff=1000, variant=variant).x
    on = dl.time_shift_sample(model, schedule, x_T, grid, window=40, cutoff=100, variant=variant, trajectory=True)
    assert torch.equal(off, plain) and not torch.allclose(on.x, plain)
    first = dl.time_shift_sample(model, schedule, x_T, grid[:2], cutoff=0, variant=variant, shift=False, trajectory=True)
    assert torch.equal(on.trajectory[1], first.trajectory[1]) == (variant == "ddim")
    with pytest.raises(ValueError, match="valid variants: ddim, deis"):
        dl.time_shift_sample(model, schedule, x_T, grid, variant="pndm")
    with pytest.raises(ValueError, match="strictly decreasing"):
        dl.time_shift_sample(model, schedule, x_T, [100, 200])


def test_fs4b_exposure_bias_demo_reports():
    """Check FS-4b (report only, no threshold): data N(0, v0) in 3072 dimensions, the exact noise prediction times
    (1 + delta), 10 DDIM steps with and without Time-Shift; the final pixel variance / v0 is finite and printed."""
    for delta in (0.0, 0.05, -0.05):
        for v0 in (0.0625, 0.25):
            out = dl.exposure_bias_demo(delta, v0, n=16)
            print(f"FS-4b delta={delta:+.2f} v0={v0}: DDIM {out['ddim']:.3f}, Time-Shift {out['time_shift']:.3f}")
            assert all(np.isfinite(list(out.values())))
