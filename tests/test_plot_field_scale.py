"""plot_field's arrow scale: a labelled reference arrow (quiver key) and a scale shared between panels."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.quiver import Quiver, QuiverKey  # noqa: E402

from diffusion_lessons import plotting  # noqa: E402


def _linear(x, t):
    return -3.0 * x  # norms up to 3 sqrt(2) * 4 = 17 on the default extent


def _parts(ax):
    children = ax.get_children()
    return ([c for c in children if isinstance(c, Quiver)], [c for c in children if isinstance(c, QuiverKey)])


def test_plain_arrows_get_a_labelled_key_with_a_round_length():
    ax = plotting.plot_field(_linear, 0.5, n=11)
    arrows, keys = _parts(ax)
    assert len(arrows) == 1 and len(keys) == 1
    norms = np.hypot(arrows[0].U, arrows[0].V)
    length = keys[0].U
    assert length / 1.6 < np.percentile(norms, 90) < 1.6 * length  # a round number near the typical arrow
    assert length / 10 ** np.floor(np.log10(length)) in (1, 2, 5)
    assert keys[0].text.get_text() == f"{length:g}"
    ax.figure.canvas.draw()
    plt.close(ax.figure)


def test_a_shared_scale_draws_arrows_in_plot_units():
    fig, axes = plt.subplots(1, 2)
    for ax, factor in zip(axes, (1.0, 2.0)):
        plotting.plot_field(lambda x, t, f=factor: f * _linear(x, t), 0.5, n=9, ax=ax, scale=6.0)
    quivers = [_parts(ax)[0][0] for ax in axes]
    assert all(q.scale == 6.0 and q.scale_units == "xy" and q.angles == "xy" for q in quivers)
    assert np.allclose(np.hypot(quivers[1].U, quivers[1].V), 2 * np.hypot(quivers[0].U, quivers[0].V))
    fig.canvas.draw()
    plt.close(fig)


def test_no_key_when_asked_for_none_for_a_zero_field_or_unit_arrows():
    assert not _parts(plotting.plot_field(_linear, 0.5, n=7, key=False))[1]
    assert not _parts(plotting.plot_field(lambda x, t: torch.zeros_like(x), 0.5, n=7))[1]
    assert not _parts(plotting.plot_field(_linear, 0.5, n=7, normalize=True))[1]  # colour carries the norm there
    with pytest.raises(ValueError, match="scale must be a positive number"):
        plotting.plot_field(_linear, 0.5, n=7, scale=0.0)
    plt.close("all")
