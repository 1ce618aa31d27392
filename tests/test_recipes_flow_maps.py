"""Chapter 12's recipes: the fit calls they build (without training), their registration and their claims."""
import pytest
import torch

from diffusion_lessons import flow_maps as fm
from diffusion_lessons import recipes
from diffusion_lessons.recipes import flow_maps as ch12

METHODS = ("cd", "ct", "shortcut", "meanflow", "pd8", "pd4", "pd2", "pd1")
NO_CLAIM = {"ch12-meanflow-gmm2": "MeanFlow failing", "ch12-meanflow-digits16": "failing on the digits too",
            "ch12-shortcut-digits16": "barely better"}


def _call(name, kind):
    """The FitCall at smoke, through the registry."""
    call = recipes.fit_call(name, "smoke")
    assert call.kwargs["budget"] == "smoke"
    return call


@pytest.mark.parametrize("kind", ["gmm2", "digits16"])
def test_the_teacher_free_recipes_build_their_objectives(kind):
    expected = {"ct": (fm.ConsistencyModel, fm.ConsistencyTraining),
                "shortcut": (torch.nn.Module, fm.ShortcutObjective),
                "meanflow": (torch.nn.Module, fm.MeanFlowObjective)}
    for key, (model_class, objective_class) in expected.items():
        call = _call(f"ch12-{key}-{kind}", kind)
        assert isinstance(call.model, model_class) and isinstance(call.kwargs["objective"], objective_class)
        assert call.kwargs["name"] == f"ch12-{key}-{kind}"
        if key != "ct":
            assert call.model.config["class"] == ("FlowMapMLP" if kind == "gmm2" else "FlowMapUNet")
        else:
            assert call.kwargs["objective"].config()["end_scales"] == ch12.CT_SCHEDULE["end_scales"]
            assert call.model.net.config["class"] == ("TimeMLP" if kind == "gmm2" else "UNet")
        if kind == "digits16":
            assert {"held_out", "real"} <= set(call.extra)
            assert call.data.shape[1:] == (1, 16, 16)
        else:
            assert call.data.dim == 2


def test_the_builders_cover_every_method_on_both_data_sets():
    assert list(ch12.builders("digits16")) == [f"ch12-{m}-digits16" for m in METHODS]
    assert list(ch12.builders("gmm2")) == [f"ch12-{m}-gmm2" for m in METHODS]


def test_the_smooth_meanflow_recipe_changes_exactly_the_two_settings():
    call = recipes.fit_call("ch12-meanflow-smooth-gmm2", "smoke")
    record = recipes.fit_call("ch12-meanflow-gmm2", "smoke")
    assert call.model.config == {**record.model.config, "max_freq": 20.0}
    assert call.kwargs["objective"].config() == {**record.kwargs["objective"].config(), "norm_p": 0.0}
    assert {k: v for k, v in call.kwargs.items() if k not in ("objective", "name")} == \
        {k: v for k, v in record.kwargs.items() if k not in ("objective", "name")}


def test_every_chapter12_recipe_is_registered_with_a_description_and_a_claim():
    names = [n for n in recipes.names() if n.startswith("ch12-")]
    assert ch12.KINDS == ("gmm2", "digits16")
    expected = [f"ch12-{m}-{k}" for k in ch12.KINDS for m in METHODS]
    expected.insert(expected.index("ch12-pd8-gmm2"), "ch12-meanflow-smooth-gmm2")  # MeanFlow with two changes
    assert names == expected
    assert set(names) <= set(recipes.shipped_names())
    for name in names:
        recipe = recipes.get(name)
        assert recipes.describe(name) and recipe.evaluate is not None
        assert recipe.claim is not None
        if name in NO_CLAIM:  # shown failing or barely beating the baseline: no claim, and a note saying why
            assert recipe.claim.factor is None and NO_CLAIM[name] in recipe.claim.note
        else:
            assert recipe.claim.factor >= 1.2
