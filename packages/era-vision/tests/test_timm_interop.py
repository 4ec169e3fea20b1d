"""timm's own functions see an ERA-wrapped timm model as they see the bare one."""

import pytest
import torch
import torchvision

from era_vision.era import no_weight_decay, with_era

timm = pytest.importorskip("timm")
from timm.data import resolve_data_config  # noqa: E402
from timm.models import load_checkpoint  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402


def _vit(seed=0):
    # The 384-px config (its input size differs from timm's fallback), two blocks.
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_384", pretrained=False, depth=2, num_classes=10)


def _groups(optimizer, names):
    """Each param group as (weight decay, lr scale, parameter names), order-free."""
    return sorted(
        (
            g["weight_decay"],
            g.get("lr_scale", 1.0),
            tuple(sorted(names[id(p)] for p in g["params"])),
        )
        for g in optimizer.param_groups
    )


def test_data_config_is_the_models():
    bare = _vit()
    wrapped = with_era(bare, 0.6)
    assert resolve_data_config(model=wrapped) == resolve_data_config(model=bare)
    assert resolve_data_config(model=wrapped)["input_size"] == (3, 384, 384)


@pytest.mark.parametrize("layer_decay", [None, 0.75])
def test_optimizer_groups_are_the_models(layer_decay):
    bare = _vit()
    wrapped = with_era(bare, 0.6)
    names = {id(p): n for n, p in bare.named_parameters()}  # the same tensors in both
    kwargs = {"weight_decay": 0.05, "layer_decay": layer_decay}
    groups = _groups(create_optimizer_v2(wrapped, "adamw", lr=1e-3, **kwargs), names)
    assert groups == _groups(create_optimizer_v2(bare, "adamw", lr=1e-3, **kwargs), names)
    # Decayed and not; with layer decay that per layer group (embedding, 2 blocks, head).
    assert len(groups) == (2 if layer_decay is None else 8)
    undecayed = {n for decay, _, group in groups if decay == 0 for n in group}
    assert {"pos_embed", "cls_token"} <= undecayed


def test_era_visions_own_optimiser_skips_what_timm_skips():
    wrapped = with_era(_vit(), 0.6)
    exempt = no_weight_decay(wrapped)
    assert {"model.pos_embed", "model.cls_token", "model.head.bias"} <= exempt
    assert "model.head.weight" not in exempt
    resnet = with_era(torchvision.models.resnet18(num_classes=10), 0.6)
    assert no_weight_decay(resnet) == {n for n, p in resnet.named_parameters() if p.ndim <= 1}


# timm 1.0.3 calls torch.utils.checkpoint without use_reentrant, which torch 2.5 warns about.
@pytest.mark.filterwarnings("ignore:torch.utils.checkpoint. the use_reentrant:UserWarning")
def test_grad_checkpointing_reaches_the_model():
    bare = _vit()
    wrapped = with_era(bare, 0.6)
    x = torch.randn(2, 3, 384, 384)
    before = wrapped(x)
    wrapped.set_grad_checkpointing(True)
    assert bare.grad_checkpointing
    wrapped.train()
    torch.testing.assert_close(wrapped.eval()(x), before)


# timm 1.0.3 calls torch.load without weights_only, which torch 2.4-2.5 warn about.
@pytest.mark.filterwarnings("ignore:You are using `torch.load` with `weights_only=False`")
def test_a_timm_checkpoint_loads_into_the_wrapper(tmp_path):
    source = _vit(seed=1)
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    wrapped = with_era(_vit(seed=2), 0.6)
    load_checkpoint(wrapped, str(tmp_path / "bare.pth"))
    for name, value in source.state_dict().items():
        torch.testing.assert_close(wrapped.model.state_dict()[name], value, rtol=0, atol=0)
    again = with_era(_vit(seed=3), 0.6)
    again.load_state_dict(wrapped.state_dict())  # the wrapper's own, prefixed keys
    torch.testing.assert_close(again.model.pos_embed, source.pos_embed, rtol=0, atol=0)


def test_a_torchvision_model_keeps_timms_fallbacks():
    wrapped = with_era(torchvision.models.resnet18(num_classes=10), 0.6)
    for name in ("group_matcher", "no_weight_decay", "pretrained_cfg", "set_grad_checkpointing"):
        assert not hasattr(wrapped, name)
    create_optimizer_v2(wrapped, "sgd", lr=0.1, weight_decay=1e-4)  # timm's fallback path
    with pytest.raises(AttributeError, match="bogus"):
        wrapped.bogus  # noqa: B018
