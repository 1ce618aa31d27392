"""The chapter-12 comparison helpers: generators from fit results, training cost, tables and figures."""
import math

import matplotlib
import pytest
import torch

import diffusion_lessons as dl
from diffusion_lessons import flow_maps as fm

matplotlib.use("Agg")

SMALL = {"steps": 3, "batch_size": 16, "progress": False, "cache": False}


@pytest.fixture(scope="module")
def results():
    data = dl.gmm2(dtype=torch.float32)
    teacher = dl.fit(dl.TimeMLP(2, hidden=8), data, dl.VP(), **SMALL)
    cd = dl.fit(fm.ConsistencyModel(dl.TimeMLP(2, hidden=8), sigma_data=1.5), data, dl.VP(),
                objective=fm.ConsistencyDistillation(fm.EDMDenoiser(teacher.ema, "eps", dl.VP()), n_scales=18), **SMALL)
    ct = dl.fit(fm.ConsistencyModel(dl.TimeMLP(2, hidden=8)), data, dl.VP(), objective=fm.ConsistencyTraining(2, 10),
                **SMALL)
    sc = dl.fit(dl.FlowMapMLP(2, hidden=8), data, dl.RectifiedFlow(), objective=fm.ShortcutObjective(), **SMALL)
    mf = dl.fit(dl.FlowMapMLP(2, hidden=8), data, dl.RectifiedFlow(), objective=fm.MeanFlowObjective(), **SMALL)
    pd = fm.distill_rounds(dl.fit, teacher.ema, "eps", dl.VP(), data, start_steps=4, rounds=2, **SMALL)
    return {"teacher": teacher, "cd": cd, "ct": ct, "sc": sc, "mf": mf, "pd": pd}


def _counted(models):
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in models]
    return calls, handles


def test_generators_of_every_method_count_their_evaluations(results):
    z = torch.randn(32, 2)
    for key in ("cd", "ct", "sc", "mf"):
        gen = fm.generator_of(results[key])
        calls, handles = _counted([results[key].ema])
        for nfe in (1, 2, 4):
            calls.clear()
            x = gen(z, nfe)
            assert x.shape == z.shape and bool(torch.isfinite(x).all())
            assert len(calls) == nfe, (key, nfe, len(calls))
        for h in handles:
            h.remove()
    gen = fm.generator_of(results["pd"])  # students for 2 and 1 steps
    calls, handles = _counted([r.ema for r in results["pd"]])
    for nfe in (1, 2):
        calls.clear()
        assert gen(z, nfe).shape == z.shape and len(calls) == nfe
    with pytest.raises(ValueError, match=r"no student distilled for 4 steps; have \[1, 2\]"):
        gen(z, 4)
    for h in handles:
        h.remove()
    with pytest.raises(ValueError, match="needs results of fit"):
        fm.generator_of(results["teacher"])


def test_ode_generators(results):
    z = torch.randn(32, 2)
    for solver in fm.ODE_SOLVERS:
        gen = fm.ode_generator(results["teacher"].ema, "eps", dl.VP(), solver)
        assert (gen(z, 1) is None) == (solver == "heun")
        assert gen(z, 4).shape == z.shape
    with pytest.raises(ValueError, match="unknown solver"):
        fm.ode_generator(results["teacher"].ema, "eps", dl.VP(), "rk9")


def test_training_evaluations_follow_the_configs(results):
    assert fm.training_evaluations(results["cd"]) == 3 * 16 * 4
    assert fm.training_evaluations(results["sc"]) == 3 * 16 * (1 + 2 / 8)
    assert fm.training_evaluations(results["pd"]) == 2 * 3 * 16 * 3
    assert fm.training_evaluations(results["teacher"]) == 3 * 16


def test_spread_indices_and_tables():
    assert fm.spread_indices(1, 40) == (0, 39) and fm.spread_indices(2, 40) == (0, 20, 39)
    with pytest.raises(ValueError, match="nfe must lie in 1..39"):
        fm.spread_indices(40, 40)
    table = {"a": {1: 0.5, 2: 0.25}, "b": {1: None, 2: 0.125}}
    text = fm.markdown_table(table, (1, 2), extra={"a": "x"}, extra_name="cost")
    assert "| a | **0.5** | 0.25 | x |" in text and "| b | – | **0.125** |  |" in text
    scores, samples = fm.quality_table({"g": lambda z, k: z * k}, torch.ones(4, 2), (1, 3), lambda x: x.mean())
    assert scores == {"g": {1: 1.0, 3: 3.0}} and samples["g"][3].shape == (4, 2)
    assert math.isfinite(scores["g"][1])


def test_figures_draw():
    ref = torch.randn(100, 2)
    fig = fm.plot_sample_grid({"m": {1: torch.randn(50, 2), 2: None}}, ref)
    assert len(fig.axes) == 2
    fig = fm.plot_digit_rows({"a": torch.zeros(12, 1, 16, 16), "b": torch.ones(12, 1, 16, 16)})
    assert len(fig.axes) == 2


def _claims_table():
    """Lower is better. Models: cd (best 1.0 at NFE 1), pd (students 2.0, 3.0, 6.0), mf (fails at every NFE);
    solvers: euler (4.0 at NFE 1, 3.0 at NFE 2), heun (None at NFE 1: one evaluation is not a Heun step)."""
    return {"cd": {1: 1.0, 2: 1.2, 4: 1.1}, "progressive distillation": {1: 6.0, 2: 3.0, 4: 2.0},
            "mf": {1: 20.0, 2: 15.0, 4: 12.0}, "euler": {1: 4.0, 2: 3.0, 4: 2.0}, "heun": {1: None, 2: 3.6, 4: 1.5}}


def test_few_step_claims_compare_best_against_best_and_pd_at_its_worst_student(capsys):
    table, models, solvers = _claims_table(), ["cd", "progressive distillation", "mf"], ["euler", "heun"]
    ratios = fm.check_few_step_claims(table, models, solvers, baseline=12.0, margin=2.5, factor=2.0, label="SW2",
                                      no_claim={"mf": "shown failing"})
    assert ratios == {1: 4.0, 2: 3.0 / 1.2}  # NFE 1: euler 4 / cd 1; NFE 2: euler 3 / cd 1.2 (heun 3.6 is worse)
    out = capsys.readouterr().out
    assert "progressive distillation (its worst student), SW2: 6 vs no-learning baseline 12: 2x lower" in out
    assert "mf (its best NFE): SW2 12 vs the moment-matched Gaussian's 12 (factor 1.00; shown failing)" in out
    with pytest.raises(AssertionError, match="NFE 2: cd beats euler by 2.50, not the required 2.6"):
        fm.check_few_step_claims(table, models, solvers, 12.0, margin=2.6, factor=2.0, label="SW2",
                                 no_claim={"mf": "shown failing"})
    with pytest.raises(AssertionError, match="progressive distillation"):  # its best student (2.0) would pass
        fm.check_few_step_claims(table, models, solvers, 12.0, margin=2.5, factor=2.1, label="SW2",
                                 no_claim={"mf": "shown failing"})
    with pytest.raises(AssertionError, match="mf"):  # without the exemption the failing model fails the claim
        fm.check_few_step_claims(table, models, solvers, 12.0, margin=2.5, factor=2.0, label="SW2")
    ratios = fm.check_few_step_claims(table, models, solvers, 12.0, margin=None, factor=None, label="FD")
    assert math.isclose(ratios[2], 2.5) and "no claim on smoke-test weights" in capsys.readouterr().out
