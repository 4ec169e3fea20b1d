"""The training recipe, laid out as torchvision's reference: setup, one epoch, evaluation.

SGD (momentum) or AdamW, a cosine, step or multistep schedule after a linear warm-up, no weight
decay on norms and biases, drop-path and fine-tuning from local weights, bf16 or fp16 (with a GradScaler) autocast on CUDA, optional mixup/cutmix, gradient-norm
clipping, channels_last, torch.compile, gradient accumulation and EMA (with warm-up), torchrun
DDP, CSV + TensorBoard logs, atomic checkpoints every N steps, at each epoch end and on
SIGINT/SIGTERM. A checkpoint holds everything the loop carries from one step to the next (weights,
optimiser, EMA, scaler, every rank's RNG, the unlogged part of the train.csv window, the step of
the last eval row), so a resumed run continues bit-exactly (on CPU) and writes the same rows.
"""

import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from era_core.cli import UsageError, hold_run_dir, replacing_run, write_atomically
from era_core.entropy import categorical_entropy
from era_core.validation import check_positive, check_range
from era_vision.calibration import Evaluation, evaluate_heads, tag
from era_vision.config import save_config, user_input
from era_vision.data import (
    Augment,
    AugmentedDataset,
    EraseMode,
    ImageData,
    ResumableSampler,
    auto_augment,
    build_transform,
    check_worker_handover,
    dataset_labels,
    load_data,
    parse_data,
    random_erasing,
    split_holdout,
    stratified_split,
)
from era_vision.distributed import Dist, average_bn_stats, max_over_ranks, setup
from era_vision.era import no_weight_decay, with_era
from era_vision.losses import LOSSES, Regularizer
from era_vision.models import find_classifier, get_model
from era_vision.plots import write_report
from era_vision.runlog import MetricLogger, load_checkpoint

if TYPE_CHECKING:
    from torch.optim.swa_utils import PARAM_LIST

__all__ = [
    "TrainConfig",
    "TrainData",
    "Trainee",
    "build_model",
    "load_init_weights",
    "lr_at",
    "setup_data",
    "setup_model",
    "train",
    "train_one_epoch",
]

# Under DDP every rank must stop at the same step, which takes a collective; it runs every this
# many steps (and at each epoch end), not every step.
SIGNAL_CHECK_EVERY = 16


@dataclass
class TrainConfig:
    """Everything ``era-vision train`` takes; saved as ``config.yaml`` in the run folder."""

    model: str = field(
        default="resnet_narrow",
        metadata={"help": "model: a name from list_models() or timm:<name>"},
    )
    data: str = field(
        default="digits",
        metadata={
            "help": "dataset NAME[:PATH]: digits, fashion-mnist[:DIR], cifar10:ROOT, "
            "cifar100:ROOT, imagenet:ROOT (ImageFolder train/ and val/)"
        },
    )
    download: bool = field(default=False, metadata={"help": "let torchvision download CIFAR"})
    out: str | None = field(
        default=None, metadata={"help": "run folder (default runs/<data>-<model>-<reg>-seed<seed>)"}
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "continue from <out>/checkpoint.pt when it exists; --no-resume starts over "
            "(the old run is kept aside until the new one's first checkpoint)"
        },
    )
    regularizer: Regularizer = field(
        default="ce",
        metadata={
            "help": "ce: plain cross-entropy; label-smoothing (Szegedy et al. 2016); dropout "
            "before the classifier; confidence-penalty: CE - beta*H (Pereyra et al. 2017); "
            "era: SoftmaxERA head with entropy floor --min-entropy (Kang et al. 2025)"
        },
    )
    label_smoothing: float | None = field(
        default=None,
        metadata={
            "help": "label smoothing epsilon, added to ANY regulariser's cross-entropy "
            "(default 0.1 for label-smoothing, else 0; the ERA paper's timm runs used 0.1 with era)"
        },
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "dropout p before the classifier (default 0.1 for dropout, else 0)"},
    )
    confidence_penalty: float = field(
        default=0.1, metadata={"help": "beta of the confidence-penalty regulariser"}
    )
    min_entropy: float = field(default=0.6, metadata={"help": "ERA entropy floor H0 in nats"})
    era_tau: float = field(default=4.0, metadata={"help": "ERA tau (> e)"})
    era_calibration: Literal["paper", "tight"] = field(
        default="paper",
        metadata={"help": "paper: the paper's H0 mapping (a lower bound); tight: H0 is attained"},
    )
    epochs: int = field(default=10, metadata={"help": "training epochs (sets the LR schedule)"})
    batch_size: int = field(
        default=128, metadata={"help": "global batch per optimizer step (all ranks, accumulation)"}
    )
    optimizer: Literal["sgd", "adamw"] = field(
        default="sgd", metadata={"help": "sgd (Nesterov momentum) or adamw"}
    )
    lr: float = field(default=0.1, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float | None = field(
        default=None,
        metadata={
            "help": "weight decay, not applied to norms and biases (default 1e-4 for imagenet "
            "as in torchvision's ResNet recipe, else 5e-4 as for CIFAR)"
        },
    )
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear LR warm-up, in epochs"})
    sched: Literal["cosine", "step", "multistep"] = field(
        default="cosine",
        metadata={
            "help": "LR schedule after the warm-up: cosine (per step, down to --min-lr), step "
            "(x --decay-rate every --decay-epochs epochs), multistep (x --decay-rate at each "
            "epoch of --decay-milestones); timm's --sched names"
        },
    )
    min_lr: float = field(default=0.0, metadata={"help": "cosine: the LR at the last step"})
    decay_epochs: float = field(default=30.0, metadata={"help": "step: epochs between decays"})
    decay_milestones: list[int] = field(
        default_factory=lambda: [30, 60, 90],
        metadata={"help": "multistep: the epochs at which the LR decays"},
    )
    decay_rate: float = field(
        default=0.1, metadata={"help": "step, multistep: LR factor per decay"}
    )
    drop_path: float = field(
        default=0.0,
        metadata={"help": "stochastic depth rate (timm models' drop_path_rate; 0: off)"},
    )
    init_weights: str | None = field(
        default=None,
        metadata={
            "help": "fine-tune from the weights in this local file (a state dict, or a "
            "checkpoint holding one under state_dict or model); a classifier of another shape "
            "keeps its fresh initialisation"
        },
    )
    augment: Augment = field(
        default="basic",
        metadata={
            "help": "none | basic (crop, plus horizontal flip except on digits) | randaugment "
            "(+RandAugment(2, 9), random erasing p=0.25)"
        },
    )
    aa: str | None = field(
        default=None,
        metadata={
            "help": "timm auto-augment policy after the crop and flip (timm's --aa: "
            "rand-m9-mstd0.5-inc1, augmix-m3-w3, original, ...), in place of randaugment's "
            "RandAugment(2, 9); needs the timm extra"
        },
    )
    reprob: float | None = field(
        default=None,
        metadata={"help": "random erasing probability (default 0.25 with randaugment, else 0)"},
    )
    remode: EraseMode = field(
        default="const",
        metadata={
            "help": "random erasing fill: const (zeros after normalisation), rand (a normal "
            "colour per channel) or pixel (per-pixel normal noise, the ERA authors' setting)"
        },
    )
    recount: int = field(default=1, metadata={"help": "random erasing: up to this many boxes"})
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "mixup Beta(alpha, alpha) on each batch (0: off)"}
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "cutmix Beta(alpha, alpha) (0: off); with mixup, one of the two per batch"
        },
    )
    clip_grad_norm: float = field(
        default=0.0, metadata={"help": "clip the gradients' global L2 norm to this (0: off)"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    ema_decay: float = field(
        default=0.0, metadata={"help": "EMA of weights, evaluated as eval_ema/* (0: off)"}
    )
    ema_warmup: bool = field(
        default=False,
        metadata={"help": "EMA decay min(ema_decay, (1 + n) / (10 + n)) at its n-th update (timm)"},
    )
    amp: bool = field(default=True, metadata={"help": "autocast on CUDA (see --amp-dtype)"})
    amp_dtype: Literal["bfloat16", "float16"] = field(
        default="bfloat16",
        metadata={"help": "autocast dtype; float16 scales the loss with a GradScaler"},
    )
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "device"})
    workers: int = field(default=0, metadata={"help": "DataLoader workers (8+ for ImageNet)"})
    dist_bn: Literal["broadcast", "reduce", "sync"] = field(
        default="reduce",
        metadata={
            "help": "batch norm under DDP: broadcast rank 0's running stats, reduce (average "
            "them each epoch) or sync (SyncBatchNorm, CUDA only)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of init, data order and augmentation"})
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many optimizer steps (schedule unchanged)"}
    )
    train_subset: int | None = field(
        default=None,
        metadata={
            "help": "train on N training images drawn at random (seeded), stratified by class"
        },
    )
    calibration_holdout: float = field(
        default=0.05,
        metadata={
            "help": "share of the training split held out (seeded, stratified, never trained "
            "on) to fit the temperature of the calibrated eval rows; 0: no calibrated rows"
        },
    )
    log_every: int = field(default=50, metadata={"help": "log train/* every N steps"})
    eval_every: int = field(default=1, metadata={"help": "evaluate every N epochs"})
    checkpoint_every: int = field(
        default=1000, metadata={"help": "also checkpoint every N steps (0: epoch ends only)"}
    )
    test_only: bool = field(
        default=False, metadata={"help": "only evaluate <out>/checkpoint.pt on the test split"}
    )

    def __post_init__(self) -> None:
        parse_data(self.data)
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.regularizer == "label-smoothing" else 0.0
        if self.dropout is None:
            self.dropout = 0.1 if self.regularizer == "dropout" else 0.0
        if self.weight_decay is None:
            self.weight_decay = 1e-4 if parse_data(self.data)[0] == "imagenet" else 5e-4
        check_range("min_entropy", self.min_entropy, low=0.0)
        for name in ("mixup_alpha", "cutmix_alpha", "clip_grad_norm"):
            check_range(name, getattr(self, name), low=0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_inclusive=False)
        check_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_range("confidence_penalty", self.confidence_penalty, low=0.0)
        check_range("era_tau", self.era_tau, math.e, low_inclusive=False)  # as SoftmaxERA checks
        check_range("seed", self.seed, low=0)
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "eval_every"):
            check_range(name, getattr(self, name), low=1)
        check_positive("lr", self.lr)
        check_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        check_range("min_lr", self.min_lr, 0.0, self.lr, high_inclusive=False)
        check_positive("decay_epochs", self.decay_epochs)
        check_range("decay_rate", self.decay_rate, 0.0, 1.0, low_inclusive=False)
        milestones = list(self.decay_milestones)
        last = self.epochs - 1 if self.sched == "multistep" else math.inf  # else unused
        if sorted(set(milestones)) != milestones or not all(1 <= m <= last for m in milestones):
            raise ValueError(
                f"decay_milestones must be increasing epochs in [1, epochs={self.epochs}) "
                f"(with sched multistep), got {milestones}"
            )
        if self.sched == "multistep" and not milestones:
            raise ValueError("decay_milestones must name one or more epochs with sched multistep")
        check_range("drop_path", self.drop_path, 0.0, 1.0, high_inclusive=False)
        if self.reprob is not None:
            check_range("reprob", self.reprob, 0.0, 1.0)
        check_range("recount", self.recount, low=1)
        if self.aa is not None:
            auto_augment(self.aa, 32, (0.5,))  # refuses an unknown policy, or a missing timm
        if self.remode == "rand" or self.recount > 1:
            random_erasing(0.5, self.remode, self.recount)  # timm's: refuses a missing timm
        check_range("ema_decay", self.ema_decay, 0.0, 1.0, high_inclusive=False)
        check_range("workers", self.workers, low=0)
        check_range("checkpoint_every", self.checkpoint_every, low=0)
        check_range("calibration_holdout", self.calibration_holdout, 0.0, 0.5)
        for name in ("max_steps", "train_subset"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1)
        if self.test_only and not self.resume:
            raise ValueError(
                "test_only=True evaluates <out>/checkpoint.pt, which resume=False would start "
                "over: give one of the two"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}"
            )
        if self.out is None:
            name = parse_data(self.data)[0]
            self.out = (
                f"runs/{name}-{self.model.replace(':', '-')}-{self.regularizer}-seed{self.seed}"
            )

    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The regulariser's loss with this config's parameters bound."""
        kwargs: dict[str, Any] = {"label_smoothing": self.label_smoothing}
        if self.regularizer == "confidence-penalty":
            kwargs["beta"] = self.confidence_penalty
        return partial(LOSSES[self.regularizer], **kwargs)


def build_model(cfg: TrainConfig, data: ImageData) -> nn.Module:
    """The config's model for ``data``, wrapped with the ERA head when ``regularizer == "era"``.

    ``init_weights`` are loaded into the model before the head is wrapped around it.
    """
    extra: dict[str, Any] = {}
    if cfg.drop_path:
        if not cfg.model.startswith("timm:"):
            raise ValueError(f"drop_path needs a timm model (timm:<name>), got model {cfg.model!r}")
        extra["drop_path_rate"] = cfg.drop_path
    model = get_model(
        cfg.model,
        data.num_classes,
        in_chans=data.in_chans,
        image_size=data.image_size,
        drop_rate=cfg.dropout or 0.0,
        **extra,
    )
    if cfg.init_weights is not None:
        load_init_weights(model, Path(cfg.init_weights))
    if cfg.regularizer == "era":
        model = with_era(model, cfg.min_entropy, tau=cfg.era_tau, calibration=cfg.era_calibration)
    return model


def load_init_weights(model: nn.Module, path: Path) -> None:
    """Load the weights in ``path`` into ``model`` for fine-tuning.

    The file holds a state dict, or a checkpoint with one under ``state_dict`` (timm) or
    ``model`` (era-vision's; an ERA model's ``model.`` prefix is dropped). Classifier tensors
    whose shape differs (another number of classes) keep their fresh values, said in one line;
    any other missing or unexpected key is refused.

    Raises:
        ValueError: The file is unreadable, not a state dict, or does not fit ``model``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"init_weights {str(path)!r}: cannot read it ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"init_weights {str(path)!r}: not a state dict of tensors")
    if all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()
    head, _ = find_classifier(model)
    kept = [k for k, v in state.items() if k.startswith(head + ".") and k in own and own[k].shape != v.shape]  # fmt: skip
    state = {k: v for k, v in state.items() if k not in kept}
    missing = sorted(set(own) - set(state) - set(kept))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"init_weights {str(path)!r} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=False)
    if kept:
        print(f"init_weights: the classifier ({', '.join(kept)}) keeps its fresh initialisation: its shape differs")  # fmt: skip


def lr_at(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak: float,
    *,
    sched: str = "cosine",
    min_lr: float = 0.0,
    steps_per_epoch: int = 1,
    decay_epochs: float = 30.0,
    milestones: Sequence[int] = (),
    decay_rate: float = 0.1,
) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then the schedule ``sched``.

    ``cosine``: from ``peak`` to ``min_lr`` at ``total_steps``, per step; ``step``: ``peak``
    times ``decay_rate`` per ``decay_epochs`` whole epochs; ``multistep``: times ``decay_rate``
    per milestone epoch reached (epochs count from the start, warm-up included, as timm's).
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    epoch = step // steps_per_epoch
    if sched == "step":
        return peak * decay_rate ** math.floor(epoch / decay_epochs)
    if sched == "multistep":
        return peak * decay_rate ** sum(epoch >= m for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainData:
    """What a run trains and tests on, and the step counts that follow from it."""

    data: ImageData
    train_set: AugmentedDataset
    test_set: AugmentedDataset
    holdout_set: AugmentedDataset | None  # held-out training images, to fit temperatures on
    sampler: ResumableSampler
    loader: DataLoader
    micro_batch: int
    steps_per_epoch: int


def setup_data(cfg: TrainConfig, ctx: Dist) -> TrainData:
    """Load the data, hold out the calibration split, subset the rest, and build the loader.

    The held-out images (``calibration_holdout``) are drawn first and never trained on; the
    training subset is drawn from what remains.
    """
    with user_input(f"--data {cfg.data}"):
        data = load_data(cfg.data, cfg.download)
    with user_input("--calibration-holdout"):
        base, holdout = split_holdout(data.train, cfg.calibration_holdout, cfg.seed)
    if cfg.train_subset is not None:
        labels = dataset_labels(base)
        with user_input("--train-subset"):
            check_range("train_subset", cfg.train_subset, 1, len(labels), why=f"{cfg.data} train")
        # ImageFolder lists its images class by class: a prefix would drop whole classes.
        drawn = stratified_split(labels, cfg.train_subset, cfg.seed)[1]
        base = Subset(base, drawn.tolist())
    train_set = AugmentedDataset(
        base,
        build_transform(
            cfg.augment,
            data,
            train=True,
            aa=cfg.aa,
            reprob=cfg.reprob,
            remode=cfg.remode,
            recount=cfg.recount,
        ),
        cfg.seed,
    )
    test_set = AugmentedDataset(data.test, build_transform("none", data, train=False), cfg.seed)
    if holdout is not None:
        holdout = AugmentedDataset(holdout, build_transform("none", data, train=False), cfg.seed)
    micro_batch, rest = divmod(cfg.batch_size, ctx.world_size * cfg.grad_accum)
    if rest or micro_batch == 0:
        raise UsageError(
            f"--batch-size {cfg.batch_size} must be a multiple of world size {ctx.world_size} "
            f"x --grad-accum {cfg.grad_accum}"
        )
    sampler = ResumableSampler(train_set, ctx.world_size, ctx.rank, cfg.seed)
    loader = DataLoader(
        train_set,
        micro_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        # Reseeded each epoch (see train_one_epoch): workers' seeds then depend on the epoch
        # only, and creating an iterator never draws from the global RNG (dropout's).
        generator=torch.Generator(),
    )
    steps_per_epoch = len(loader) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch-size {cfg.batch_size} exceeds the {len(train_set)} training images"
        )
    return TrainData(
        data, train_set, test_set, holdout, sampler, loader, micro_batch, steps_per_epoch
    )


@dataclass
class Trainee:
    """The model and everything that updates it."""

    net: nn.Module  # the bare model: checkpoints and evaluation use it
    model: nn.Module  # what a training step calls: ``net``, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype
    memory_format: torch.memory_format


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # As timm: no decay for norm weights, biases and what the model's no_weight_decay() names.
    exempt = no_weight_decay(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n not in exempt], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n in exempt], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def ema_update(
    decay: float, warmup: bool
) -> Callable[["PARAM_LIST", "PARAM_LIST", Tensor | int], None]:
    """``AveragedModel`` multi-average function: EMA, with timm's decay warm-up if asked.

    With warm-up the decay at the n-th update is ``min(decay, (1 + n) / (10 + n))``, so early
    averages are not dominated by the random initial weights; it is computed on the counter's
    device, without a host sync.
    """
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    # torch's fused list ops (what its own EMA uses) have no public names.
    from torch import _foreach_add_, _foreach_copy_, _foreach_mul, _foreach_mul_  # pyright: ignore[reportPrivateImportUsage]

    @torch.no_grad()
    def update(averaged: "PARAM_LIST", current: "PARAM_LIST", num_averaged: Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # counters such as num_batches_tracked
            _foreach_copy_(averaged, current)
            return
        # AveragedModel passes its counter buffer (a tensor), typed as possibly an int.
        n = torch.as_tensor(num_averaged, dtype=averaged[0].dtype)
        keep = torch.clamp((1 + n) / (10 + n), max=decay)
        _foreach_mul_(averaged, keep)
        _foreach_add_(averaged, _foreach_mul(current, 1 - keep))

    return update


def setup_model(cfg: TrainConfig, data: ImageData, ctx: Dist) -> Trainee:
    """Build the model (same initial weights on every rank), optimizer, EMA and loss scaler."""
    torch.manual_seed(cfg.seed)
    with user_input(f"--model {cfg.model} --regularizer {cfg.regularizer}"):
        net = build_model(cfg, data)
    if cfg.dist_bn == "sync":
        if ctx.device.type != "cuda":
            raise UsageError("--dist-bn sync (SyncBatchNorm) needs CUDA; use reduce or broadcast")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Module.to takes memory_format at run time; torch's overloads leave it out.
    net = net.to(ctx.device, memory_format=memory_format)  # pyright: ignore[reportCallIssue]
    ema = None
    if cfg.ema_decay > 0:
        update = ema_update(cfg.ema_decay, cfg.ema_warmup)
        ema = AveragedModel(net, multi_avg_fn=update, use_buffers=True)
    model: nn.Module = net
    if ctx.world_size > 1:
        model = DistributedDataParallel(
            net,
            device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
            broadcast_buffers=cfg.dist_bn == "broadcast",
        )
    if cfg.compile:
        # Typed as returning any callable; compiling a module gives a module (OptimizedModule).
        model = cast(nn.Module, torch.compile(model))
    amp = cfg.amp and ctx.device.type == "cuda"
    fp16 = amp and cfg.amp_dtype == "float16"
    return Trainee(
        net=net,
        model=model,
        optimizer=_optimizer(cfg, net),
        ema=ema,
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=fp16),
        autocast_dtype=getattr(torch, cfg.amp_dtype) if amp else torch.float32,
        memory_format=memory_format,
    )


def batch_mix(cfg: TrainConfig, num_classes: int) -> Callable[[Tensor, Tensor], tuple] | None:
    """Mixup and/or cutmix on a batch (torchvision ``transforms.v2``); None when both are off.

    With both on, each batch gets one of the two with equal odds, as in torchvision's reference.
    Labels become class probabilities, which every regulariser's cross-entropy accepts.
    """
    mixes = [
        mix(alpha=alpha, num_classes=num_classes)
        for mix, alpha in ((v2.MixUp, cfg.mixup_alpha), (v2.CutMix, cfg.cutmix_alpha))
        if alpha > 0
    ]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


@dataclass
class Position:
    """Where the loop is, beyond the weights: saved in every checkpoint."""

    step: int
    # steps, loss and entropy summed since the last train.csv row (this rank's share)
    log_sums: Tensor
    eval_step: int | None = None  # step of the last eval.csv row


# Fields that may differ when a run is resumed: where and how fast it runs, not what it learns.
RUNTIME_FIELDS = {
    "out",
    "resume",
    "download",
    "device",
    "workers",
    "compile",
    "channels_last",
    "max_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "test_only",
}


def _check_same_recipe(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    defaults = TrainConfig()
    # era-vision 0.1 held no calibration images out: its runs trained on the whole split.
    saved = {"calibration_holdout": 0.0} | saved
    changed = [
        f"{f.name}={saved.get(f.name, getattr(defaults, f.name))!r} -> {getattr(cfg, f.name)!r}"
        for f in fields(cfg)
        if f.name not in RUNTIME_FIELDS
        and saved.get(f.name, getattr(defaults, f.name)) != getattr(cfg, f.name)
    ]
    if changed:
        raise UsageError(
            f"{path} was trained with another recipe ({', '.join(changed)}); use another --out, "
            "or --no-resume to start it over"
        )


def save_checkpoint(path: Path, cfg: TrainConfig, trainee: Trainee, pos: Position, ctx: Dist):
    """Write the checkpoint (rank 0) after gathering what each rank holds (all ranks call this)."""
    log_sums = pos.log_sums.clone()
    if ctx.world_size > 1:
        dist.all_reduce(log_sums)
    state = {
        "model": trainee.net.state_dict(),
        "optimizer": trainee.optimizer.state_dict(),
        "ema": trainee.ema.state_dict() if trainee.ema is not None else None,
        "scaler": trainee.scaler.state_dict(),
        "step": pos.step,
        "log_sums": log_sums.cpu(),
        "eval_step": pos.eval_step,
        "rng": _rng_state(ctx),
        "config": asdict(cfg),
    }
    if ctx.main:
        # A full disk or a kill mid-write leaves the previous checkpoint whole.
        write_atomically(path, lambda file: torch.save(state, file))


def resume_checkpoint(path: Path, cfg: TrainConfig, trainee: Trainee, ctx: Dist) -> Position:
    """Load ``path`` into ``trainee`` and the RNGs; return where the saved run stopped."""
    state = load_checkpoint(path, ctx.device)
    _check_same_recipe(state["config"], cfg, path)
    step = state["step"]
    if cfg.max_steps is not None and cfg.max_steps < step and not cfg.test_only:
        raise UsageError(
            f"--max-steps {cfg.max_steps} is below the step of {path}, {step}: the run is past "
            f"it (give {step} or more, or --no-resume to start over)"
        )
    trainee.net.load_state_dict(state["model"])
    trainee.optimizer.load_state_dict(state["optimizer"])
    if trainee.ema is not None:
        trainee.ema.load_state_dict(state["ema"])
    # Empty when saved without float16 autocast (on CPU, say): a run resumed on CUDA with
    # float16 then starts a fresh scaler, as the saved run never scaled its loss.
    if state.get("scaler"):
        trainee.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == ctx.world_size:
        torch.set_rng_state(state["rng"][ctx.rank]["cpu"].cpu())
        if state["rng"][ctx.rank]["cuda"] is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"][ctx.rank]["cuda"].cpu(), ctx.device)
    else:  # another world size: continue with fresh, still deterministic, streams
        torch.manual_seed(cfg.seed + 1 + ctx.rank + 1_000_003 * step)
    log_sums = torch.zeros(3, device=ctx.device)
    if ctx.main and "log_sums" in state:  # the ranks' sums were added up: rank 0 holds them
        log_sums += state["log_sums"].to(ctx.device)
    return Position(step, log_sums, state.get("eval_step"))


def _rng_state(ctx: Dist) -> list[dict[str, Tensor | None]]:
    """Every rank's RNG state (each rank draws its own dropout masks)."""
    state = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
    }
    if ctx.world_size == 1:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, state)
    return states


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag; all ranks agree to ``stop`` at the same step.

    The handler only records the signal, so whatever the loop was doing when it arrived
    completes; the loop reads ``stop`` after a whole step, when its state is a checkpoint's.
    """

    def __init__(self, ctx: Dist):
        self.ctx, self.signum, self.stop = ctx, 0, False

    def __enter__(self) -> "_Interrupt":
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def check(self, step: int, every: int = SIGNAL_CHECK_EVERY) -> bool:
        """Whether to stop after ``step``; under DDP decided jointly every ``every`` steps."""
        if self.ctx.world_size == 1:
            self.stop = self.signum > 0
        elif step % every == 0:
            self.signum = max_over_ranks(self.ctx, self.signum)
            self.stop = self.signum > 0
        return self.stop


def train_one_epoch(
    cfg: TrainConfig,
    trainee: Trainee,
    data: TrainData,
    pos: Position,
    end: int,
    ctx: Dist,
    interrupt: _Interrupt,
    logger: MetricLogger | None,
    progress: tqdm,
    save: Callable[[], None],
) -> None:
    """Train from ``pos.step`` to the end of its epoch, ``end`` or a signal; advances ``pos``.

    ``save()`` checkpoints the loop's state (all ranks call it), every ``checkpoint_every``
    steps.
    """
    spe = data.steps_per_epoch
    total_steps, warmup_steps = cfg.epochs * spe, round(cfg.warmup_epochs * spe)
    epoch, done = divmod(pos.step, spe)
    data.sampler.set_epoch(epoch)
    data.train_set.set_epoch(epoch)
    data.sampler.start = done * data.micro_batch * cfg.grad_accum
    data.loader.generator.manual_seed(cfg.seed * 1_000_003 + epoch)  # type: ignore[union-attr]
    batches = _batches(data.loader)
    loss_fn, mix = cfg.loss_fn(), batch_mix(cfg, data.data.num_classes)
    trainee.net.train()
    window = (pos.step, time.perf_counter())  # for images/s
    while done < spe and pos.step < end:
        lr = lr_at(
            pos.step, total_steps, warmup_steps, cfg.lr, sched=cfg.sched, min_lr=cfg.min_lr,
            steps_per_epoch=spe, decay_epochs=cfg.decay_epochs, milestones=cfg.decay_milestones,
            decay_rate=cfg.decay_rate,
        )  # fmt: skip
        _train_step(cfg, trainee, batches, lr, loss_fn, mix, pos.log_sums, ctx)
        pos.step, done = pos.step + 1, done + 1
        progress.update()
        if pos.step % cfg.log_every == 0:
            speed = cfg.batch_size * (pos.step - window[0]) / (time.perf_counter() - window[1])
            _log_train(cfg, pos, lr, spe, speed, ctx, logger, progress)
            window = (pos.step, time.perf_counter())
        if interrupt.check(pos.step):
            return
        if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
            save()


def _batches(loader: DataLoader) -> Iterator:
    """The loader's batches; a ``UsageError`` raised in a worker keeps its one-line message."""
    try:
        yield from loader
    except UsageError as error:
        # DataLoader re-raises a worker's exception with the worker's traceback in the message.
        *_, last = str(error).rstrip().splitlines()
        raise UsageError(last.removeprefix(f"{UsageError.__module__}.UsageError: ")) from error


def _train_step(
    cfg: TrainConfig,
    trainee: Trainee,
    batches: Iterator,
    lr: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    mix: Callable | None,
    log_sums: Tensor,
    ctx: Dist,
) -> None:
    """One optimizer step over ``grad_accum`` micro-batches; adds to ``log_sums``."""
    optimizer, scaler = trainee.optimizer, trainee.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    for micro in range(cfg.grad_accum):
        images, labels = next(batches)
        images = images.to(ctx.device, non_blocking=True, memory_format=trainee.memory_format)
        labels = labels.to(ctx.device, non_blocking=True)
        if mix is not None:
            images, labels = mix(images, labels)
        last = micro == cfg.grad_accum - 1
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        # With several ranks the model is DDP-wrapped (a compiled wrapper forwards no_sync).
        sync = (
            cast(DistributedDataParallel, trainee.model).no_sync()
            if ctx.world_size > 1 and not last
            else nullcontext()
        )
        with sync:
            dtype = trainee.autocast_dtype
            with torch.autocast(ctx.device.type, dtype, enabled=dtype != torch.float32):
                logits = trainee.model(images)
                loss = loss_fn(logits, labels)
            scaler.scale(loss / cfg.grad_accum).backward()
        with torch.no_grad():
            entropy = categorical_entropy(logits.detach().float()).mean()
            log_sums += torch.stack([loss.new_tensor(1.0), loss.detach(), entropy]) / cfg.grad_accum
    if cfg.clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trainee.net.parameters(), cfg.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if trainee.ema is not None:
        trainee.ema.update_parameters(trainee.net)


def _log_train(
    cfg: TrainConfig,
    pos: Position,
    lr: float,
    steps_per_epoch: int,
    images_per_s: float,
    ctx: Dist,
    logger: MetricLogger | None,
    progress: tqdm,
) -> None:
    sums = pos.log_sums
    if ctx.world_size > 1:
        dist.all_reduce(sums)
    count, loss_sum, entropy_sum = sums.tolist()
    row = {
        "train/loss": loss_sum / count,
        "train/entropy": entropy_sum / count,
        "train/lr": lr,
        "train/epoch": pos.step / steps_per_epoch,
    }
    if logger is not None:
        logger.log(pos.step, row)
        # Its own file: train.csv holds only what a resumed run reproduces exactly.
        logger.log(pos.step, {"speed/images_per_s": images_per_s})
    progress.set_postfix(loss=f"{row['train/loss']:.4f}", img_s=f"{images_per_s:.0f}")
    sums.zero_()


def evaluate_models(
    cfg: TrainConfig, trainee: Trainee, data: TrainData, ctx: Dist
) -> dict[str, Evaluation]:
    """Test metrics of the model (``eval``) and its EMA (``eval_ema``), merged over ranks.

    Each holds both heads, before and after temperature scaling (``evaluate_heads``).

    The training RNG streams are left as they were (a DataLoader draws its base seed from the
    global generator), so whether and how often a run evaluates never changes what it learns.
    """
    models = {"eval": trainee.net}
    if trainee.ema is not None:
        models["eval_ema"] = trainee.ema.module
    args = (data.test_set, data.holdout_set, ctx, cfg.batch_size, cfg.workers)
    args += (trainee.memory_format, cfg.amp)
    with torch.random.fork_rng([ctx.device] if ctx.device.type == "cuda" else []):
        return {group: evaluate_heads(model, *args) for group, model in models.items()}


def _log_eval(
    results: dict[str, Evaluation], step: int, epoch: float, logger: MetricLogger | None
) -> None:
    # Rows per head (era, plain) and calibrated (false, true): eval.csv, eval_ema.csv.
    if logger is not None:
        for group, evaluation in results.items():
            logger.log_rows(group, step, {tag(r): {"epoch": epoch} | r for r in evaluation.rows})


def checkpoint_path(cfg: TrainConfig) -> Path:
    """``<out>/checkpoint.pt``."""
    return Path(cfg.out) / "checkpoint.pt"  # type: ignore[arg-type]


# What a run writes into its folder, besides its CSVs (MetricLogger owns every *.csv there),
# the reports of `era-vision eval --data` on its checkpoint (eval-<data>/) and the temporary
# files of checkpoint writes a kill cut short (.checkpoint.pt.*.tmp, era_core.cli.write_atomically).
RUN_FILES = (
    "config.yaml",
    "checkpoint.pt",
    "tb",
    "eval.json",
    "eval_reliability.png",
)


def _prepare_run_dir(
    run_dir: Path, cfg: TrainConfig, stack: ExitStack, starts_over: bool
) -> Callable[[], None]:
    """Write the run's ``config.yaml``; a run that starts over first sets the old run aside.

    Called after every check of the new settings, as the run's first write. The old run's
    files stay in ``<out>/.replaced`` (``era_core.cli.replacing_run``, held by ``stack``)
    until the new run's first checkpoint, and come back if the run fails before it.

    Returns:
        ``done()``, to call once a checkpoint of the new run is on disk.
    """
    names: set[str] = set()
    if starts_over:
        names = {*RUN_FILES, *(p.name for p in run_dir.glob("*.csv"))}
        names |= {p.name for p in run_dir.glob(".checkpoint.pt.*.tmp")}
        names |= {p.name for p in run_dir.glob("eval-*") if p.is_dir()}
    try:
        done = stack.enter_context(replacing_run(run_dir, names))
        save_config(cfg, run_dir / "config.yaml")
    except OSError as error:
        raise UsageError(f"cannot write the run folder: {error} (--out {run_dir})") from error
    return done


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run and evaluate it on the test split.

    Args:
        cfg: The run's configuration.

    Returns:
        ``status`` ("finished", "paused" at ``max_steps``, "interrupted" by a signal, or
        "tested" with ``test_only``), ``signal``, ``step``, and the final test ``metrics`` (None
        when interrupted): one row per head and calibration, and the ``evaluation`` they come
        from (with this rank's test logits), see ``era_vision.calibration``.

    Raises:
        UsageError: For input the user can fix (data, model, device, run folder, checkpoint).
    """
    with user_input(f"--device {cfg.device}"):
        ctx = setup(cfg.device)
    check_worker_handover(cfg.workers)
    run_dir, checkpoint = Path(cfg.out), checkpoint_path(cfg)  # type: ignore[arg-type]
    data = setup_data(cfg, ctx)
    trainee = setup_model(cfg, data.data, ctx)
    if cfg.test_only and not checkpoint.exists():
        raise UsageError(f"--test-only needs a checkpoint, and {checkpoint} does not exist")
    with _own_run_dir(run_dir, ctx):
        return _run(cfg, ctx, data, trainee)


@contextmanager
def _own_run_dir(run_dir: Path, ctx: Dist) -> Iterator[None]:
    """Hold ``run_dir``'s lock (rank 0, for the whole job) while the block runs.

    Collective under DDP: when rank 0 cannot take it (another process holds it, or the
    folder cannot be created) every rank raises, so none waits for the others.
    """
    with ExitStack() as held:
        refused: UsageError | None = None
        if ctx.main:
            try:
                held.enter_context(hold_run_dir(run_dir))
            except UsageError as error:
                refused = UsageError(f"--out: {error}")
        if max_over_ranks(ctx, int(refused is not None)) and refused is None:
            refused = UsageError(f"--out: rank 0 cannot own the run folder {str(run_dir)!r}")
        if refused is not None:
            raise refused
        yield


def _run(cfg: TrainConfig, ctx: Dist, data: TrainData, trainee: Trainee) -> dict[str, Any]:
    """:func:`train` once the job owns the run folder."""
    run_dir, checkpoint = Path(cfg.out), checkpoint_path(cfg)  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed + 1 + ctx.rank)  # per-rank streams for dropout and mixing
    pos = Position(0, torch.zeros(3, device=ctx.device))
    resumed = (cfg.resume or cfg.test_only) and checkpoint.exists()
    if resumed:
        pos = resume_checkpoint(checkpoint, cfg, trainee, ctx)
    result: dict[str, Any] = {"signal": 0, "step": pos.step, "metrics": None, "evaluation": None}
    if cfg.test_only:
        tested = evaluate_models(cfg, trainee, data, ctx)["eval"]
        if ctx.main:
            write_report(tested, run_dir, "eval")
        return result | {"status": "tested", "metrics": tested.rows, "evaluation": tested}

    with ExitStack() as stack:
        logger, replaced = None, None
        if ctx.main:  # rank 0 writes the run folder
            # Every check of the settings is behind us (data, model, device, the lock, the
            # checkpoint's recipe): this is the run's first write.
            replaced = _prepare_run_dir(run_dir, cfg, stack, starts_over=not resumed)
            resume_step = pos.step if resumed else None
            logger = stack.enter_context(closing(MetricLogger(run_dir, resume_step)))

        def save() -> None:
            save_checkpoint(checkpoint, cfg, trainee, pos, ctx)
            if replaced is not None:
                replaced()  # the new run is on disk: the old run it replaces may go

        return result | _train_loop(cfg, ctx, data, trainee, pos, logger, save)


def _train_loop(
    cfg: TrainConfig,
    ctx: Dist,
    data: TrainData,
    trainee: Trainee,
    pos: Position,
    logger: MetricLogger | None,
    save: Callable[[], None],
) -> dict[str, Any]:
    """Train from ``pos`` to the end or ``max_steps``, then evaluate; ``train``'s result."""
    run_dir, spe = Path(cfg.out), data.steps_per_epoch  # type: ignore[arg-type]
    total_steps = cfg.epochs * spe
    end = total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps)
    progress = tqdm(total=end, initial=pos.step, disable=not ctx.main, desc=run_dir.name)
    evaluation: dict[str, Evaluation] | None = None  # at pos.eval_step
    with _Interrupt(ctx) as interrupt, progress:
        while pos.step < end and not interrupt.stop:
            train_one_epoch(cfg, trainee, data, pos, end, ctx, interrupt, logger, progress, save)
            epoch, done = divmod(pos.step, spe)
            if done == 0:  # an epoch ended
                if cfg.dist_bn == "reduce" and ctx.world_size > 1:
                    average_bn_stats(trainee.net)
                if epoch % cfg.eval_every == 0 or pos.step == total_steps:
                    evaluation = evaluate_models(cfg, trainee, data, ctx)
                    _log_eval(evaluation, pos.step, epoch, logger)
                    pos.eval_step = pos.step
                interrupt.check(pos.step, every=1)
            save()

    result: dict[str, Any] = {"signal": interrupt.signum, "step": pos.step}
    if interrupt.stop:
        return result | {"status": "interrupted"}
    result["status"] = "finished" if pos.step == total_steps else "paused"
    if evaluation is None or pos.eval_step != pos.step:
        evaluation = evaluate_models(cfg, trainee, data, ctx)
    if pos.eval_step != pos.step:  # else eval.csv has this row: a rerun adds none
        _log_eval(evaluation, pos.step, pos.step / spe, logger)
        pos.eval_step = pos.step
        save()
    result["metrics"], result["evaluation"] = evaluation["eval"].rows, evaluation["eval"]
    if ctx.main:
        write_report(evaluation["eval"], run_dir, "eval")
    return result
