import pytest
import torch
from torch import nn

from era_vision import get_model, list_models, register_model


def test_list_models_has_registered_and_torchvision():
    names = list_models()
    assert {"resnet_narrow", "mlp", "resnet18", "resnet50", "vit_b_16"} <= set(names)


@pytest.mark.parametrize(("in_chans", "size"), [(1, 8), (1, 28), (3, 32)])
def test_narrow_resnet_shapes(in_chans, size):
    model = get_model("resnet_narrow", 10, in_chans=in_chans, image_size=size)
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_torchvision_resnet_gets_a_small_input_stem():
    small = get_model("resnet18", 10, in_chans=1, image_size=28)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.in_channels == 1
    assert isinstance(small.maxpool, nn.Identity)
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert get_model("resnet18", 10).conv1.kernel_size == (7, 7)


def test_dropout_goes_before_the_classifier():
    model = get_model("resnet18", 10, drop_rate=0.3)
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.3
    assert get_model("resnet_narrow", 10, drop_rate=0.3).head.drop.p == 0.3


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        get_model("resnet_nope", 10)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("mlp", 1)
    with pytest.raises(ValueError, match="drop_rate"):
        get_model("mlp", 10, drop_rate=1.0)
    with pytest.raises(ValueError, match="in_chans=3"):
        get_model("mobilenet_v3_small", 10, in_chans=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda *a: None)


def test_register_model():
    @register_model("test_linear")
    def build(num_classes, in_chans, image_size, drop_rate):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size**2, num_classes))

    assert "test_linear" in list_models()
    assert get_model("test_linear", 4, in_chans=1, image_size=2)(torch.zeros(1, 1, 2, 2)).shape == (
        1,
        4,
    )


def test_timm_models():
    pytest.importorskip("timm")
    model = get_model("timm:resnet18", 5, in_chans=1, drop_rate=0.2)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown timm model"):
        get_model("timm:not_a_model", 5)
