import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from era_vision.data import (
    AugmentedDataset,
    ResumableSampler,
    TensorImages,
    build_transform,
    load_data,
    read_idx,
)


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (12, 28, 28)),
        "t10k": rng.integers(0, 256, (5, 28, 28)),
    }
    suffix = ".gz" if compress else ""
    for split, array in images.items():
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", array, compress)
        _write_idx(
            tmp_path / f"{split}-labels-idx1-ubyte{suffix}", np.arange(len(array)) % 10, compress
        )
    data = load_data(f"fashion-mnist:{tmp_path}")
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 1, 28)
    image, label = data.train[3]
    assert image.shape == (1, 28, 28) and label == 3
    assert np.array_equal(image[0].numpy(), images["train"][3])
    assert len(data.test) == 5


def test_idx_refuses_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def _write_cifar(root, classes):
    rng = np.random.default_rng(0)
    folder, files, key = {
        10: (
            "cifar-10-batches-py",
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
            b"labels",
        ),
        100: ("cifar-100-python", ["train", "test"], b"fine_labels"),
    }[classes]
    (root / folder).mkdir()
    for name in files:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: [0, 1, 2, 3]}
        with open(root / folder / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_folder(tmp_path, classes):
    _write_cifar(tmp_path, classes)
    data = load_data(f"cifar{classes}:{tmp_path}")
    assert data.num_classes == classes and data.image_size == 32
    assert len(data.train) == (20 if classes == 10 else 4) and len(data.test) == 4
    image, label = data.test[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 2


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for k, name in enumerate(["cat", "dog"]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40 + i, 30), (100 * k, 50, i)).save(
                    tmp_path / split / name / f"{i}.png"
                )
    data = load_data(f"imagenet:{tmp_path}")
    assert data.num_classes == 2 and not data.in_memory
    for augment in ("none", "basic", "randaugment"):
        image, label = AugmentedDataset(data.train, build_transform(augment, data, train=True))[3]
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("mnist", "unknown dataset"),
        ("cifar10", "needs a folder"),
        ("cifar10:/nonexistent/x", "does not exist"),
        ("fashion-mnist:/nonexistent/x", "dataset-fashion-mnist"),
        ("imagenet:/tmp", "train/"),
    ],
)
def test_bad_data_is_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        load_data(spec)


def _tiny_data():
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    return TensorImages(images, torch.arange(10))


def test_augmentation_is_a_function_of_seed_epoch_index():
    data = load_data("digits")
    dataset = AugmentedDataset(data.train, build_transform("basic", data, train=True), seed=3)
    rng = torch.get_rng_state()
    first = [dataset[i][0] for i in (4, 1, 7)]
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's stream is untouched
    assert torch.equal(dataset[1][0], first[1]) and torch.equal(dataset[7][0], first[2])
    dataset.set_epoch(1)
    assert not all(torch.equal(dataset[i][0], first[0]) for i in (4,))
    evaluation = AugmentedDataset(data.test, build_transform("basic", data, train=False))
    expected = (data.test[0][0].float() / 255 - data.mean[0]) / data.std[0]
    torch.testing.assert_close(evaluation[0][0], expected)


def test_resumable_sampler_skips_a_prefix():
    sampler = ResumableSampler(_tiny_data(), num_replicas=2, rank=1, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.start = 3
    assert list(sampler) == full[3:] and len(sampler) == len(full) - 3
    sampler.set_epoch(3)
    sampler.start = 0
    assert list(sampler) != full
