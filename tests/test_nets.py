import json

import pytest
import torch

from diffusion_lessons.nets import EnergyNet, TimeEmbedding, TimeMLP, UNet, build_model


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).double()


def test_time_mlp_broadcasts_a_float_time():
    model, x = _seeded(TimeMLP, 3, hidden=16), torch.randn(5, 3, dtype=torch.float64)
    out = model(x, 0.3)
    assert out.shape == x.shape
    torch.testing.assert_close(out, model(x, torch.full((5,), 0.3, dtype=torch.float64)), rtol=0, atol=0)
    assert not torch.allclose(out, model(x, 0.7))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"^TimeMLP\(dim=2\) expects x of shape \[N, 2\]; got \[N, 3\]$"):
        TimeMLP(2)(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"EnergyNet\(dim=2\) expects x of shape \[N, 2\]; got \[N\]"):
        EnergyNet(2)(torch.randn(4), 0.5)
    with pytest.raises(ValueError, match=r"UNet.*\[N, 1, H, W\] with H, W divisible by 4; got \[2, 1, 10, 10\]"):
        UNet()(torch.randn(2, 1, 10, 10), 0.5)
    with pytest.raises(ValueError, match=r"shape \[N\] = \[4\]"):
        TimeMLP(2)(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TimeMLP(2)(torch.randn(4, 2), 1.5)


def test_time_embedding_values():
    emb = TimeEmbedding(8, max_freq=1000.0).double()
    torch.testing.assert_close(emb.freqs, torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64),
                               rtol=1e-6, atol=0)  # geometric from 1 to max_freq
    out = emb(torch.tensor([0.0, 0.5], dtype=torch.float64))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 4 + [1.0] * 4, dtype=torch.float64))
    torch.testing.assert_close(out[1], torch.cat([torch.sin(0.5 * emb.freqs), torch.cos(0.5 * emb.freqs)]))
    with pytest.raises(ValueError, match="even dim"):
        TimeEmbedding(7)


def test_class_conditioning_with_a_null_label():
    model, x = _seeded(TimeMLP, 2, hidden=16, num_classes=3), torch.randn(4, 2, dtype=torch.float64)
    null = torch.full((4,), 3)
    torch.testing.assert_close(model(x, 0.5), model(x, 0.5, null), rtol=0, atol=0)
    assert not torch.allclose(model(x, 0.5, torch.zeros(4, dtype=torch.long)), model(x, 0.5, null))
    with pytest.raises(ValueError, match=r"integers of shape \[4\] in 0\.\.3"):
        model(x, 0.5, torch.full((4,), 4))
    with pytest.raises(ValueError, match="without num_classes"):
        TimeMLP(2)(torch.randn(4, 2), 0.5, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("size, mults", [(16, (1, 2)), (32, (1, 2, 2))])
def test_unet_shapes_and_per_sample_independence(size, mults):
    model = _seeded(UNet, channels=2, base=8, mults=mults, time_dim=16, num_classes=10)
    x, t = torch.randn(3, 2, size, size, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    y = torch.tensor([1, 5, 10])
    out = model(x, t, y)
    assert out.shape == x.shape
    # GroupNorm normalises per sample: a sample's output does not depend on the rest of the batch
    torch.testing.assert_close(out[1:2], model(x[1:2], t[1:2], y[1:2]))


def _jacobian(field, x, t):
    return torch.autograd.functional.jacobian(lambda z: field(z[None], t)[0], x)


def test_energy_net_is_a_gradient_field():
    model, x = _seeded(EnergyNet, 3, hidden=16), torch.randn(6, 3, dtype=torch.float64)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(xg, 0.4).sum(), xg)
    torch.testing.assert_close(model(x, 0.4), -grad)
    jac = _jacobian(model, x[0], 0.4)  # = -Hessian of E: symmetric
    torch.testing.assert_close(jac, jac.T, rtol=1e-12, atol=1e-12)
    mlp_jac = _jacobian(_seeded(TimeMLP, 3, hidden=16), x[0], 0.4)  # a generic network is not
    assert torch.linalg.norm(mlp_jac - mlp_jac.T) > 0.1 * torch.linalg.norm(mlp_jac)


def test_energy_net_trains_and_samples_without_grad():
    model, x = _seeded(EnergyNet, 2, hidden=16), torch.randn(8, 2, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, 0.5)
    assert not out.requires_grad
    model(x, 0.5).square().sum().backward()  # the loss reaches the weights through -grad_x E
    weights = [p for p in model.parameters() if p.dim() == 2]  # (biases of the last layer shift E only)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


@pytest.mark.parametrize("cls, kwargs", [(TimeMLP, {"dim": 2, "hidden": 8, "num_classes": 4}),
                                         (EnergyNet, {"dim": 3, "depth": 2}),
                                         (UNet, {"channels": 1, "base": 8, "mults": (1, 2, 2)})])
def test_build_model_rebuilds_from_a_json_config(cls, kwargs):
    model = cls(**kwargs)
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    rebuilt = build_model(config)
    assert type(rebuilt) is cls and rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # same architecture, parameter for parameter


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model class 'ResNet'; valid classes: TimeMLP, UNet, EnergyNet"):
        build_model({"class": "ResNet"})
    with pytest.raises(ValueError, match="bad config for TimeMLP.*width"):
        build_model({"class": "TimeMLP", "dim": 2, "width": 3})
