import math

import pytest
import torch
import torchvision
from torch.torch_version import TorchVersion

from era_core.entropy import categorical_entropy
from era_core.testing import cpu_and_cuda, requires_torch
from era_vision import ERAClassifier, find_classifier, get_model, with_era

TORCHVISION = [
    ("resnet18", 32),
    ("mobilenet_v3_small", 32),
    ("vit_b_16", 224),
    ("regnet_x_400mf", 32),
]


def _check_head(model, images, min_entropy):
    # Spread the logits: some models initialise their classifier near zero, and ties make
    # "argmax preserved" vacuous.
    for layer in find_classifier(model)[1].modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight)
    model.eval()
    with torch.no_grad():
        raw = model(images)
        era = with_era(model, min_entropy)(images)
    assert era.shape == raw.shape
    assert torch.equal(era.argmax(-1), raw.argmax(-1))
    assert categorical_entropy(era).min() >= min_entropy


@pytest.mark.parametrize(("name", "size"), TORCHVISION)
def test_torchvision_models(name, size):
    if name == "vit_b_16":  # full ViT-B is slow on a CPU; same `heads` layout, 2 tiny layers
        model = torchvision.models.VisionTransformer(size, 16, 2, 2, 32, 64, num_classes=10)
    else:
        model = torchvision.models.get_model(name, num_classes=10)
    _check_head(model, torch.randn(2, 3, size, size), min_entropy=0.6)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224", "convnext_atto"])
def test_timm_models(name):
    timm = pytest.importorskip("timm")
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, num_classes=7, **kwargs)
    _check_head(model, torch.randn(2, 3, 32, 32), min_entropy=1.0)
    wrapped = with_era(model, 1.0)
    features = wrapped.forward_features(torch.randn(2, 3, 32, 32))
    assert wrapped.forward_head(features, pre_logits=True).shape[-1] == model.num_features
    assert categorical_entropy(wrapped.forward_head(features)).min() >= 1.0


def test_registered_model_and_random_logits_hold_the_floor():
    model = with_era(get_model("resnet_narrow", 10, in_chans=1, image_size=8), 1.0)
    assert model.num_classes == 10
    # Extreme logits straight into the head: the floor holds for every row.
    logits = torch.randn(512, 10) * torch.logspace(-2, 3, 512)[:, None]
    assert categorical_entropy(model.era(logits)).min() >= 1.0
    model.reset_classifier(3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_infeasible_floor_is_refused():
    model = get_model("resnet_narrow", 3, in_chans=1, image_size=8)
    with pytest.raises(ValueError, match="min_entropy"):
        with_era(model, math.log(3) + 0.1)
    wrapped = with_era(get_model("resnet_narrow", 10, in_chans=1, image_size=8), 2.0)
    with pytest.raises(ValueError, match="min_entropy"):
        wrapped.reset_classifier(3)  # log 3 < 2.0


def test_classifier_not_found():
    with pytest.raises(ValueError, match="cannot find the classifier"):
        with_era(torch.nn.Sequential(torch.nn.Linear(4, 3)), 0.5)


def test_find_classifier_paths():
    assert find_classifier(torchvision.models.resnet18())[0] == "fc"
    assert find_classifier(torchvision.models.mobilenet_v3_small())[0] == "classifier"
    assert find_classifier(get_model("resnet_narrow", 10))[0] == "head.fc"


def test_state_dict_round_trip():
    a = with_era(get_model("resnet_narrow", 10, in_chans=1), 0.6)
    b = with_era(get_model("resnet_narrow", 10, in_chans=1), 0.6)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 8, 8)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@requires_torch("2.8", "earlier torch.export cannot trace softmax_era's autograd Function")
def test_export_eval_graph():
    model = with_era(get_model("resnet_narrow", 10, in_chans=1, width=4), 0.6).eval()
    x = torch.randn(3, 1, 8, 8)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_compile_matches_eager():
    model = with_era(get_model("mlp", 10, in_chans=1, image_size=8), 0.6)
    x = torch.randn(5, 1, 8, 8)
    # aot_eager traces through dynamo and AOTAutograd (where custom autograd code breaks)
    # without needing a C++ toolchain; the inductor path runs in the GPU test. Dynamo traces
    # the ERA head's autograd Function whole from torch 2.11 (2.4-2.10 measured to break the
    # graph there, and run that part eagerly).
    whole = TorchVersion(torch.__version__) >= "2.11"
    compiled = torch.compile(model, backend="aot_eager", fullgraph=whole)
    eager = model(x)
    out = compiled(x)
    torch.testing.assert_close(out, eager)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_head_under_autocast(device):
    model = with_era(get_model("resnet_narrow", 10, in_chans=3), 0.6).to(device)
    x = torch.randn(8, 3, 32, 32, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float32
    assert categorical_entropy(out).min() >= 0.6


@pytest.mark.gpu
# float32 on purpose (the comparison's tolerance); inductor suggests TF32 on tensor-core GPUs.
@pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning")
def test_inductor_compile_cuda():
    model = with_era(get_model("resnet_narrow", 10, in_chans=3), 0.6).cuda()
    x = torch.randn(16, 3, 32, 32, device="cuda")
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_erac_is_a_module():
    assert isinstance(with_era(get_model("mlp", 10, in_chans=1, image_size=8), 0.6), ERAClassifier)
