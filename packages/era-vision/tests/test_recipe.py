"""Recipe flags (mixup/cutmix, clipping, EMA warm-up, erasing, --test-only) and data fixes."""

import csv

import pytest
import torch
import torchvision
from torch.utils.data import Subset

from era_core.cli import UsageError
from era_vision import with_era
from era_vision.data import (
    AugmentedDataset,
    TensorImages,
    build_transform,
    dataset_labels,
    load_data,
    stratified_split,
)
from era_vision.train import TrainConfig, batch_mix, build_model, ema_update, train

TINY = dict(
    data="digits", train_subset=256, batch_size=32, device="cpu", log_every=1, warmup_epochs=0.0
)


def test_train_subset_is_a_seeded_stratified_draw():
    labels = torch.arange(10).repeat_interleave(50)  # class-ordered, as ImageFolder lists them
    _, drawn = stratified_split(labels, 100, seed=0)
    assert torch.equal(torch.bincount(labels[drawn]), torch.full((10,), 10))  # a prefix: 2 classes
    assert torch.equal(drawn, stratified_split(labels, 100, seed=0)[1])
    assert not torch.equal(drawn, stratified_split(labels, 100, seed=1)[1])
    images = TensorImages(torch.zeros(500, 1, 2, 2, dtype=torch.uint8), labels)
    subset = Subset(images, drawn.tolist())
    assert torch.equal(dataset_labels(subset), labels[drawn])  # read without indexing samples


def test_basic_augmentation_does_not_flip_digits():
    data = load_data("digits")
    ramp = torch.arange(1, 65, dtype=torch.uint8).view(1, 8, 8) * 3  # increases left to right
    transform = build_transform("basic", data, train=True)
    for seed in range(40):
        torch.manual_seed(seed)
        row = transform(ramp)[0, 4]
        inside = row[row > row.min()]  # the padded (zero) border maps to the minimum
        assert torch.all(inside[1:] > inside[:-1]), f"seed {seed} flipped the digit"


def test_pixel_erasing_fills_with_noise():
    images = TensorImages(torch.full((1, 1, 8, 8), 78, dtype=torch.uint8), torch.zeros(1))
    data = load_data("digits")
    distinct = {}
    for mode in ("const", "pixel"):
        transform = build_transform("randaugment", data, train=True, remode=mode)
        outputs = []
        for seed in range(40):
            torch.manual_seed(seed)
            outputs.append(transform(images[0][0]).unique().numel())
        distinct[mode] = max(outputs)
    assert distinct["pixel"] >= distinct["const"] + 5  # a noise patch: many new values


def test_mixup_and_cutmix_give_class_probabilities(tmp_path):
    mix = batch_mix(TrainConfig(mixup_alpha=0.2, cutmix_alpha=1.0), num_classes=10)
    images, labels = mix(torch.randn(8, 1, 8, 8), torch.arange(8))
    assert images.shape == (8, 1, 8, 8) and labels.shape == (8, 10)
    torch.testing.assert_close(labels.sum(-1), torch.ones(8))
    assert batch_mix(TrainConfig(), num_classes=10) is None
    result = train(
        TrainConfig(
            model="mlp", epochs=1, mixup_alpha=0.2, cutmix_alpha=1.0, out=str(tmp_path), **TINY
        )
    )
    assert result["status"] == "finished"


def test_grad_norm_clipping_bounds_the_update(tmp_path):
    cfg = TrainConfig(
        model="mlp", epochs=1, clip_grad_norm=1e-9, weight_decay=0.0, out=str(tmp_path), **TINY
    )
    train(cfg)
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, load_data("digits")).state_dict()
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    # 8 SGD steps of lr 0.1 with momentum on gradients of norm <= 1e-9
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) < 1e-7


def test_ema_warmup_follows_timm():
    update = ema_update(0.99, warmup=True)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(1))  # second update: decay (1 + 1) / (10 + 1)
    torch.testing.assert_close(averaged[0], torch.full((3,), 9 / 11))
    counters = [torch.tensor(3)]
    update(counters, [torch.tensor(5)], torch.tensor(1))
    assert counters[0] == 5


def test_test_only_evaluates_the_checkpoint_and_writes_no_rows(tmp_path):
    cfg = dict(model="mlp", epochs=1, out=str(tmp_path), **TINY)
    with pytest.raises(UsageError, match="--test-only needs a checkpoint"):
        train(TrainConfig(test_only=True, **cfg))
    finished = train(TrainConfig(**cfg))
    rows = (tmp_path / "eval.csv").read_text()
    tested = train(TrainConfig(test_only=True, **cfg))
    assert tested["status"] == "tested" and tested["metrics"] == finished["metrics"]
    assert (tmp_path / "eval.csv").read_text() == rows


def test_images_per_second_logged_beside_train_rows(tmp_path):
    train(TrainConfig(model="mlp", epochs=1, out=str(tmp_path), **TINY))
    with open(tmp_path / "speed.csv") as f:
        speeds = [float(r["speed/images_per_s"]) for r in csv.DictReader(f)]
    assert len(speeds) == 8 and min(speeds) > 0
    with open(tmp_path / "train.csv") as f:
        assert "speed/images_per_s" not in next(csv.reader(f))


def test_torchvision_models_without_timm_methods():
    model = with_era(torchvision.models.resnet18(num_classes=10), 0.6)
    with pytest.raises(AttributeError, match=r"forward_head.*torchvision"):
        model.forward_head(torch.randn(1, 512))
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_weight_decay_default_depends_on_the_dataset():
    assert TrainConfig(data="imagenet:/data").weight_decay == 1e-4
    assert TrainConfig(data="cifar10:/data").weight_decay == 5e-4
    assert TrainConfig(data="imagenet:/data", weight_decay=0.05).weight_decay == 0.05


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "augmix-m3-w3", "original"])
def test_timm_auto_augment_policies_are_deterministic_per_sample(policy):
    pytest.importorskip("timm")
    data = load_data("digits")
    transform = build_transform("basic", data, train=True, aa=policy, reprob=0.6, remode="pixel")
    dataset = AugmentedDataset(data.train, transform, seed=0)
    first, again = dataset[3][0], dataset[3][0]
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # (seed, epoch, index) decide
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3][0], first)
    assert first.shape == (1, data.image_size, data.image_size)


def test_timm_erasing_modes_and_counts():
    pytest.importorskip("timm")
    data = load_data("digits")
    transform = build_transform("basic", data, train=True, reprob=1.0, remode="rand", recount=3)
    image = AugmentedDataset(data.train, transform, seed=0)[0][0]
    assert image.shape == (1, data.image_size, data.image_size)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"aa": "bogus-policy"}, "not a timm auto-augment policy"),
        ({"reprob": 1.5}, "reprob"),
        ({"recount": 0}, "recount"),
    ],
)
def test_augmentation_flags_refuse_bad_values(settings, message):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)
