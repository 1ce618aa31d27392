import pytest
import torch

from diffusion_lessons import budget


def test_current_reads_the_environment(monkeypatch):
    for name in budget.BUDGETS:
        monkeypatch.setenv(budget.BUDGET_ENV, name)
        assert budget.current() == name
    monkeypatch.setenv(budget.BUDGET_ENV, " Smoke ")
    assert budget.current() == "smoke"


def test_default_follows_cuda(monkeypatch):
    monkeypatch.delenv(budget.BUDGET_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert budget.current() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert budget.current() == "laptop"


def test_unknown_budget_names_it_and_the_valid_ones(monkeypatch):
    monkeypatch.setenv(budget.BUDGET_ENV, "huge")
    with pytest.raises(ValueError, match=r"'huge'.*DIFFUSION_LESSONS_BUDGET.*smoke, laptop, gpu"):
        budget.current()
    with pytest.raises(ValueError, match=r"'tiny'.*smoke, laptop, gpu"):
        budget.pick(smoke=1, laptop=2, gpu=3, budget="tiny")


def test_pick(monkeypatch):
    monkeypatch.setenv(budget.BUDGET_ENV, "laptop")
    assert budget.pick(smoke=1, laptop=2, gpu=3) == 2
    assert budget.pick(smoke=1, laptop=2, gpu=3, budget="gpu") == 3
    assert budget.pick(smoke="a", laptop="b", gpu="c", budget="smoke") == "a"
