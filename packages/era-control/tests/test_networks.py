import torch

from era_control import rng
from era_control.networks import EnsembleLinear, EnsembleMLP, clip_grad_norm_per_seed_


def test_linear_matches_per_member_matmul():
    layer = EnsembleLinear(rng.generators([0, 1, 2]), 5, 4)
    x = torch.randn(3, 7, 5)
    expected = torch.stack([x[m] @ layer.weight[m] + layer.bias[m] for m in range(3)])
    torch.testing.assert_close(layer(x), expected)


def test_same_seed_same_params_different_seed_different_params():
    net = EnsembleMLP(rng.generators([0, 1, 0]), 6, (8, 8), 2, layer_norm=True)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p[0], p[2], rtol=0, atol=0, msg=name)
        if "weight" in name and p.dim() == 3 and p.shape[1] > 1:  # linear weights
            assert not torch.equal(p[0], p[1]), name
    # A member's weights do not depend on the ensemble it belongs to.
    alone = EnsembleMLP(rng.generators([1]), 6, (8, 8), 2, layer_norm=True)
    for (name, p), q in zip(net.named_parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p[1], q[0], rtol=0, atol=0, msg=name)


def test_members_do_not_exchange_gradients():
    net = EnsembleMLP(rng.generators([0, 1, 2]), 4, (8,), 3, activation="elu", layer_norm=True)
    x = torch.randn(3, 5, 4, requires_grad=True)
    net(x)[1].sum().backward()
    for name, p in net.named_parameters():
        assert p.grad[0].abs().sum() == 0 and p.grad[2].abs().sum() == 0, name
        assert p.grad[1].abs().sum() > 0, name
    assert x.grad[0].abs().sum() == 0 and x.grad[1].abs().sum() > 0


def test_gradient_clipping_is_per_seed():
    weight = torch.nn.Parameter(torch.zeros(3, 2, 2))
    bias = torch.nn.Parameter(torch.zeros(3, 1, 2))
    weight.grad = torch.tensor([3.0, 0.1, 30.0]).view(3, 1, 1).expand(3, 2, 2).clone()
    bias.grad = torch.zeros(3, 1, 2)
    norms = clip_grad_norm_per_seed_([weight, bias], max_norm=1.0, seeds=3)
    torch.testing.assert_close(norms, torch.tensor([6.0, 0.2, 60.0]))
    after = torch.linalg.vector_norm(weight.grad.flatten(1), dim=1)
    torch.testing.assert_close(after, torch.tensor([1.0, 0.2, 1.0]), rtol=1e-5, atol=1e-6)


def test_gradient_clipping_groups_a_seeds_members():
    # Two seeds with two members each (e.g. Q heads): a seed's norm spans both its members.
    weight = torch.nn.Parameter(torch.zeros(4, 1, 1))
    weight.grad = torch.tensor([3.0, 4.0, 0.3, 0.4]).view(4, 1, 1).clone()
    norms = clip_grad_norm_per_seed_([weight], max_norm=1.0, seeds=2)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(
        weight.grad.flatten(), torch.tensor([0.6, 0.8, 0.3, 0.4]), rtol=1e-5, atol=1e-6
    )
