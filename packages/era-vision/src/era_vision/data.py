"""Datasets, augmentation presets and the samplers that make training resumable.

A dataset is named ``NAME[:PATH]``:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no files needed), the demo default;
- ``fashion-mnist[:DIR]``: IDX files (gzipped or not), by default from
  ``/usr/share/datasets/fashion-mnist``, which Debian's ``dataset-fashion-mnist`` installs;
- ``cifar10:ROOT`` / ``cifar100:ROOT``: torchvision's layout (``ROOT/cifar-10-batches-py``);
- ``imagenet:ROOT``: any ImageFolder layout, ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.
"""

import gzip
import itertools
import multiprocessing.util
import os
import pickle
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from era_core.cli import UsageError
from era_core.validation import check_range

__all__ = [
    "Augment",
    "AugmentedDataset",
    "EraseMode",
    "ImageData",
    "Normalize",
    "RandomCropFlip",
    "ResumableSampler",
    "TensorImages",
    "auto_augment",
    "build_transform",
    "check_worker_handover",
    "dataset_labels",
    "load_data",
    "random_erasing",
    "read_idx",
    "split_holdout",
    "stratified_split",
]

Augment = Literal["none", "basic", "randaugment"]
EraseMode = Literal["const", "rand", "pixel"]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ImageData:
    """A dataset's splits and what models and transforms need to know about it."""

    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Whole images live in memory as uint8 tensors (False: PIL images read from disk).
    in_memory: bool = True
    # Whether a horizontal flip keeps the label (not for digits: a flipped 2 is no digit).
    hflip: bool = True


class TensorImages(Dataset):
    """Images ``(n, channels, h, w)`` uint8 and labels ``(n,)`` int64 held in memory."""

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 (n, c, h, w) with one label per image")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


# The longest Unix socket path, its terminating NUL excluded (sockaddr_un.sun_path).
_SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107


def check_worker_handover(workers: int) -> None:
    """Refuse DataLoader workers whose batches could never reach this process.

    With torch's default ``file_descriptor`` sharing, a worker hands each batch over through a
    Unix socket that multiprocessing binds in its temp dir (under ``TMPDIR``). Where that path
    is too long the bind fails inside the worker's queue thread, which drops the batch, and the
    loader waits for it forever; so a long ``TMPDIR`` would hang training, not fail it.

    Raises:
        UsageError: ``workers > 0`` and the socket path would exceed the limit.
    """
    if workers == 0 or torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return
    # Named like multiprocessing's own listener address: "listener-" and 8 random characters.
    address = os.path.join(multiprocessing.util.get_temp_dir(), "listener-xxxxxxxx")
    if len(os.fsencode(address)) > _SOCKET_PATH_MAX:
        raise UsageError(
            f"--workers {workers}: workers hand batches over through a Unix socket such as "
            f"{address!r}, {len(os.fsencode(address))} bytes, over the {_SOCKET_PATH_MAX} a "
            "socket path may have; set a shorter TMPDIR, or use --workers 0"
        )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped when the name ends in ``.gz``.

    Args:
        path: The file.

    Returns:
        The array with the file's shape (uint8 data only, as in (Fashion-)MNIST).

    Raises:
        ValueError: If the header is not a uint8 IDX header or the size does not match it.
    """
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise ValueError(f"{root} has no {name}[.gz]")


def _fashion_mnist(root: Path, download: bool) -> ImageData:
    if download:
        raise ValueError(
            "fashion-mnist is read from local IDX files only: install Debian's "
            "dataset-fashion-mnist or pass fashion-mnist:/dir/with/idx-files"
        )

    def split(prefix: str) -> TensorImages:
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
        return TensorImages(
            torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.copy())
        )

    return ImageData(split("train"), split("t10k"), 10, 1, 28, (0.2860,), (0.3530,))


def _cifar(root: Path, download: bool, classes: int) -> ImageData:
    folder, train_files, test_files, key = {
        10: (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
        ),
        100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    }[classes]
    if download and not (root / folder).exists():
        dataset = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
        dataset(root, download=True)
    if not (root / folder).is_dir():
        raise ValueError(
            f"{root} has no {folder}/ (torchvision layout); pass --download to fetch it"
        )

    def split(files: list[str]) -> TensorImages:
        batches = []
        for name in files:
            with open(root / folder / name, "rb") as f:
                batches.append(pickle.load(f, encoding="bytes"))
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b[key] for b in batches])
        return TensorImages(torch.from_numpy(images), torch.from_numpy(labels))

    stats = {
        10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    }[classes]
    return ImageData(split(train_files), split(test_files), classes, 3, 32, *stats)


def _digits() -> ImageData:
    from sklearn.datasets import load_digits
    from sklearn.utils import Bunch

    # Inferred as ``Bunch | tuple`` (the tuple is for return_X_y=True).
    digits = cast(Bunch, load_digits())
    # Pixel values are 0..16; scale to the usual 0..255 range.
    images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))[:, None]
    labels = torch.from_numpy(digits.target)
    # A fixed shuffle, then 80 % train / 20 % test.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return ImageData(
        TensorImages(images[train], labels[train]),
        TensorImages(images[test], labels[test]),
        10,
        1,
        8,
        (0.3053,),
        (0.3759,),
        hflip=False,
    )


def _read_image(path: str) -> object:
    """ImageFolder's loader, reporting an unreadable file by name."""
    try:
        return torchvision.datasets.folder.default_loader(path)
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise UsageError(f"cannot read image {path} ({type(error).__name__})") from error


def _image_folder(root: Path) -> ImageData:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(
                f"{root} has no {split}/ folder (ImageFolder layout: {split}/<class>/*)"
            )
    splits = []
    for split in ("train", "val"):
        try:
            splits.append(torchvision.datasets.ImageFolder(root / split, loader=_read_image))
        except FileNotFoundError as error:  # no class folder, or no image in any of them
            raise ValueError(f"{root}/{split} holds no images in class folders") from error
    train, test = splits
    if len(train.classes) < 2:
        raise ValueError(f"{root}/train has {len(train.classes)} class folder; need at least 2")
    if train.classes != test.classes:
        only = sorted(set(train.classes) ^ set(test.classes))
        raise ValueError(
            f"{root}/train and {root}/val have different class folders (in one only: {only})"
        )
    return ImageData(train, test, len(train.classes), 3, 224, *_IMAGENET_STATS, in_memory=False)


def parse_data(spec: str) -> tuple[str, Path | None]:
    """Split ``NAME[:PATH]`` into the name and the path (None when absent)."""
    name, _, path = spec.partition(":")
    return name, Path(path).expanduser() if path else None


DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagenet")


def load_data(spec: str, download: bool = False) -> ImageData:
    """Load a dataset named ``NAME[:PATH]`` (see the module docstring).

    Args:
        spec: ``digits``, ``fashion-mnist[:DIR]``, ``cifar10:ROOT``, ``cifar100:ROOT`` or
            ``imagenet:ROOT``.
        download: Let torchvision download CIFAR into ROOT when it is missing.

    Returns:
        The train and test splits with their class count, channels, image side and statistics.

    Raises:
        ValueError: If the name is unknown, the path is missing or the files are malformed.
    """
    name, root = parse_data(spec)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return _digits()
    if name == "fashion-mnist":
        root = root or FASHION_MNIST_DIR
    if root is None:
        raise ValueError(f"dataset {name!r} needs a folder: --data {name}:/path")
    if not root.is_dir() and not (download and name.startswith("cifar")):
        hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise ValueError(f"data folder {root} for {name!r} does not exist{hint}")
    if name == "fashion-mnist":
        return _fashion_mnist(root, download)
    if name in ("cifar10", "cifar100"):
        return _cifar(root, download, 10 if name == "cifar10" else 100)
    return _image_folder(root)


def dataset_labels(dataset: Dataset) -> Tensor:
    """The class label of every sample, ``(n,)`` int64, without decoding images where possible.

    Reads ``TensorImages.labels`` or ImageFolder's ``targets`` (also through a ``Subset``); any
    other dataset is indexed sample by sample.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for name in ("labels", "targets"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name), dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def stratified_split(labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw ``size`` indices at random with each class in proportion to its frequency.

    Within each class the samples are shuffled (seeded); sample ``r`` of a class of ``n_c``
    gets the score ``(r + 0.5) / n_c`` and the ``size`` lowest scores are drawn, so every
    class gets ``size * n_c / n`` samples up to one, whatever the order of ``labels``.

    Args:
        labels: ``(n,)`` class indices.
        size: How many to draw, in ``[0, n]``.
        seed: Seed of the shuffle.

    Returns:
        ``(rest, drawn)``: sorted indices of the samples not drawn and of those drawn.
    """
    n = len(labels)
    check_range("size", size, 0, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    by_class = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[by_class] = torch.arange(n) - first[shuffled[by_class]]
    score = (rank + 0.5) / counts[shuffled]
    drawn = torch.zeros(n, dtype=torch.bool)
    drawn[order[torch.argsort(score, stable=True)[:size]]] = True
    return drawn.logical_not().nonzero().flatten(), drawn.nonzero().flatten()


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split a training set into the images to train on and a held-out calibration split.

    The held-out split (``round(fraction * n)`` images, stratified by class, seeded) is never
    trained on; temperature scaling is fitted on it (``era_vision.calibration``).

    Args:
        dataset: The training split.
        fraction: Share of it to hold out, 0 (nothing) or in ``[0, 0.5]`` and large enough
            to hold out at least one image.
        seed: Seed of the draw (the run's seed).

    Returns:
        ``(train, holdout)``; ``holdout`` is None when ``fraction`` is 0.

    Raises:
        ValueError: ``fraction`` is outside ``[0, 0.5]``, or rounds to no image.
    """
    check_range("calibration_holdout", fraction, 0.0, 0.5)
    if fraction == 0:
        return dataset, None
    n = len(dataset)  # type: ignore[arg-type]
    size = round(fraction * n)
    if size == 0:  # else the calibrated rows would vanish without a word
        check_range(
            "calibration_holdout", fraction, 0.5 / n, 0.5, low_inclusive=False,
            why=f"or 0: below that it holds out no image of the {n} training images",
        )  # fmt: skip
    rest, held = stratified_split(dataset_labels(dataset), size, seed)
    return Subset(dataset, rest.tolist()), Subset(dataset, held.tolist())


class RandomCropFlip(torch.nn.Module):
    """Random crop from a zero-padded uint8 tensor image, then a horizontal flip with p=0.5.

    The same result as torchvision's ``RandomCrop(padding=...)`` + ``RandomHorizontalFlip``,
    written directly on tensors: ~2.5x faster per 28x28 image than the v2 pipeline, whose
    per-image overhead otherwise dominates a small model's epoch on a CPU.

    Args:
        padding: Zero padding on each side before the crop.
        flip: Whether to flip at all (not for digits, whose label a flip can change).
    """

    def __init__(self, padding: int, flip: bool = True):
        super().__init__()
        self.padding, self.flip = padding, flip

    def forward(self, image: Tensor) -> Tensor:
        """Augment one ``(channels, h, w)`` image."""
        h, w = image.shape[-2:]
        p = self.padding
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        out = torch.nn.functional.pad(image, (p, p, p, p))[..., top : top + h, left : left + w]
        return out.flip(-1) if self.flip and torch.rand(()) < 0.5 else out


def auto_augment(policy: str, image_size: int, mean: tuple[float, ...]) -> Callable:
    """Timm's auto-augment op for a policy string (timm's ``--aa``), on PIL images.

    ``rand-...`` is RandAugment, ``augmix-...`` AugMix, anything else AutoAugment (``original``,
    ``v0``, ...), dispatched as timm's ``create_transform`` does, with its parameters (translation
    45 % of the side, the dataset's mean colour as fill).

    Raises:
        ImportError: The ``timm`` extra is not installed.
        ValueError: timm does not know the policy.
    """
    try:
        from timm.data import auto_augment as aa
    except ImportError as error:
        raise ImportError("aa (timm's auto-augment policies) needs the extra: pip install 'era-vision[timm]'") from error  # fmt: skip
    params = {"translate_const": int(image_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}  # fmt: skip
    try:
        if policy.startswith("rand"):
            return aa.rand_augment_transform(policy, params)
        if policy.startswith("augmix"):
            return aa.augment_and_mix_transform(policy, params)
        return aa.auto_augment_transform(policy, params)
    except (AssertionError, KeyError, ValueError) as error:
        raise ValueError(f"aa {policy!r} is not a timm auto-augment policy ({error})") from None


def build_transform(
    augment: Augment,
    data: ImageData,
    train: bool,
    *,
    aa: str | None = None,
    reprob: float | None = None,
    remode: EraseMode = "const",
    recount: int = 1,
) -> Callable:
    """The transform from a stored image (uint8 tensor or PIL) to a normalised float tensor.

    Presets for training: ``none`` (the paper's "without augmentation" column), ``basic``
    (random crop, plus a horizontal flip where it keeps the label: padded crops for in-memory
    sets, RandomResizedCrop for ImageFolder) and ``randaugment`` (basic + RandAugment(2, 9) +
    random erasing p=0.25 of the normalised image, the "with augmentation" column). Evaluation
    uses ``none`` (ImageFolder: resize to 8/7 of the side, centre crop).

    Args:
        augment: The preset.
        data: The dataset (its image size, storage and whether flips keep labels).
        train: Training or evaluation transform.
        aa: A timm auto-augment policy applied after the crop and flip, in place of the
            preset's RandAugment(2, 9) (:func:`auto_augment`; timm's ``--aa``).
        reprob: Random erasing probability (default: 0.25 with ``randaugment``, else 0;
            timm's ``--reprob``).
        remode: Erased box fill: ``const`` (zeros, i.e. the mean colour), ``rand`` (one normal
            colour per channel) or ``pixel`` (per-pixel normal noise, the ERA authors' setting).
        recount: Boxes erased per image (up to; timm's ``--recount``).

    Returns:
        A callable for one image, drawing from the global torch, Python and NumPy RNGs.
    """
    if not train:
        augment, aa, reprob = "none", None, 0.0
    if reprob is None:
        reprob = 0.25 if augment == "randaugment" else 0.0
    size = data.image_size
    steps: list[Callable]
    if data.in_memory:
        steps = [] if augment == "none" else [RandomCropFlip(size // 8, flip=data.hflip)]
    elif augment == "none":
        steps = [v2.Resize(size * 8 // 7), v2.CenterCrop(size), v2.PILToTensor()]
    else:
        flip = [v2.RandomHorizontalFlip()] if data.hflip else []
        steps = [v2.RandomResizedCrop(size), *flip, v2.PILToTensor()]
    if aa is not None:  # timm's ops work on PIL images
        steps += [v2.ToPILImage(), auto_augment(aa, size, data.mean), v2.PILToTensor()]
    elif augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
    steps.append(Normalize(data.mean, data.std))
    if reprob > 0:
        steps.append(random_erasing(reprob, remode, recount))
    return v2.Compose(steps)


def random_erasing(probability: float, mode: EraseMode, count: int) -> Callable:
    """Random erasing of the normalised image: torchvision's for one box, timm's otherwise."""
    if mode != "rand" and count == 1:
        value = "random" if mode == "pixel" else 0
        # torchvision annotates ``value`` as a float, but documents and accepts "random".
        return v2.RandomErasing(p=probability, value=value)  # pyright: ignore[reportArgumentType]
    try:
        from timm.data.random_erasing import RandomErasing
    except ImportError as error:
        raise ImportError("remode rand and recount > 1 use timm's random erasing: pip install 'era-vision[timm]'") from error  # fmt: skip
    return RandomErasing(probability, mode=mode, max_count=count, device="cpu")


class Normalize(torch.nn.Module):
    """uint8 image to float32, normalised per channel with the dataset's mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean = torch.tensor(mean).view(-1, 1, 1) * 255
        self.std = torch.tensor(std).view(-1, 1, 1) * 255

    def forward(self, image: Tensor) -> Tensor:
        """Normalise one ``(channels, h, w)`` image."""
        return (image.float() - self.mean) / self.std


class AugmentedDataset(Dataset):
    """Applies a transform whose randomness depends only on (seed, epoch, index).

    So the augmentation of a sample is the same whatever the number of workers or ranks, and
    a run resumed in the middle of an epoch sees exactly what the uninterrupted run saw.
    """

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[index]
        # Reseed only the CPU generator the transforms draw from, then put its state back, so
        # the caller's RNG stream is untouched (torch.random.fork_rng costs ~100x more).
        # Python's and NumPy's streams too: timm's auto-augment policies draw from them.
        state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002
        sample_seed = (self.seed * 1_000_003 + self.epoch) * len(self) + index
        torch.default_generator.manual_seed(sample_seed)
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)  # noqa: NPY002 - the global stream timm's AugMix draws
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(state)
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (a pure function of seed and epoch) that can skip a prefix.

    ``start`` is the number of this rank's samples of the current epoch already trained on.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return super().__len__() - self.start
