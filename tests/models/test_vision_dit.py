"""The DiT of models.vision: shapes, patchify round trip, adaLN-Zero start, the rectified-flow
loss and Euler sampling."""

import pytest
import torch

import hysparse_kernels as hk

from hysparse_kernels.models.vision import DiT, DiTConfig, euler_sample, flow_matching_loss, patchify, unpatchify
from hysparse_kernels.models.vision.dit import sincos_2d

@pytest.fixture(autouse=True)
def _reference_attention():
    """The models' attention through the op's reference backend: these tests check the models
    and the loop, the kernels have their own tests (and TVM would compile each new shape)."""
    with hk.use_backend("reference"):
        yield


SMALL = DiTConfig(px=16, patch=4, dim=32, depth=2, heads=2, mlp_ratio=2)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 16)
    p = patchify(x, 4)
    assert p.shape == (2, 16, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # patch (0, 1), channels first
    assert torch.equal(unpatchify(p, 4, 3), x)


def test_forward_shapes_and_zero_start():
    torch.manual_seed(0)
    model = DiT(SMALL)
    x, c = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    v = model(x, torch.rand(3), c)
    assert v.shape == (3, 3, 16, 16)
    assert torch.count_nonzero(v) == 0  # adaLN-Zero and a zero output layer: the velocity starts at 0
    assert sincos_2d(4, 32).shape == (1, 16, 32)


def test_output_depends_on_condition_and_noise_level_after_a_step():
    torch.manual_seed(0)
    model = DiT(SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x0, c = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    loss = flow_matching_loss(model, x0, c, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("out."))
    opt.step()
    for seed in range(1, 4):  # zero-initialised gates: the blocks get gradients from the second step on
        opt.zero_grad()
        flow_matching_loss(model, x0, c, generator=torch.Generator().manual_seed(seed)).backward()
        opt.step()
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.3])
    assert not torch.allclose(model(x, s, c[:2]), model(x, s, c[2:]))
    assert not torch.allclose(model(x, s, c[:2]), model(x, torch.tensor([0.9, 0.9]), c[:2]))


def test_one_euler_step_is_x_minus_v():
    torch.manual_seed(0)
    model = DiT(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    c, noise = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expect = (noise - model(noise, torch.ones(2), c)).clamp(-1, 1)
    assert torch.allclose(euler_sample(model, c, 1, noise=noise), expect, atol=1e-6)
    out = euler_sample(model, c, 3, noise=noise)
    assert out.shape == c.shape and out.abs().max() <= 1.0


def test_flow_matching_is_exact_for_the_true_velocity():
    """With x0 fixed, the model v = ε - x0 has zero loss: check the target's sign and scaling."""

    class Oracle(torch.nn.Module):
        def __init__(self, x0):
            super().__init__()
            self.x0 = x0

        def forward(self, x_t, sigma, cond):
            s = sigma[:, None, None, None]
            return (x_t - self.x0) / s  # = ε - x0 since x_t = (1 - σ) x0 + σ ε

    x0 = torch.rand(2, 3, 8, 8)
    loss = flow_matching_loss(Oracle(x0), x0, x0, generator=torch.Generator().manual_seed(0))
    assert loss < 1e-8
    out = euler_sample(Oracle(x0), x0, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0.clamp(-1, 1), atol=1e-5)


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match="patch"):
        DiTConfig(px=30, patch=4)
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(dim=30, heads=4)
    model = DiT(SMALL)
    with pytest.raises(ValueError, match="cond"):
        model(torch.randn(1, 3, 16, 16), torch.rand(1), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="sigma"):
        model(torch.randn(2, 3, 16, 16), torch.rand(3), torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        euler_sample(model, torch.randn(1, 3, 16, 16), 0)
