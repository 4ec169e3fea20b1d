"""The training recipe: one config dataclass and one loop, read top to bottom.

SGD (momentum) or AdamW, cosine schedule with linear warm-up, no weight decay on norms and
biases, bf16 autocast on CUDA, optional channels_last / torch.compile / gradient accumulation /
EMA, torchrun DDP, CSV + TensorBoard logs, atomic checkpoints every N steps, at each epoch end
and on SIGINT/SIGTERM; a resumed run continues bit-exactly (on CPU).
"""

import math
import signal
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from era_core.entropy import categorical_entropy
from era_core.validation import check_positive, check_range
from era_vision.calibration import evaluate_heads, tag
from era_vision.config import save_config
from era_vision.data import (
    Augment,
    AugmentedDataset,
    ImageData,
    ResumableSampler,
    build_transform,
    load_data,
    parse_data,
    split_holdout,
)
from era_vision.distributed import Dist, average_bn_stats, setup
from era_vision.era import with_era
from era_vision.losses import LOSSES, Regularizer
from era_vision.models import get_model
from era_vision.plots import write_report
from era_vision.runlog import MetricLogger, atomic_save

__all__ = ["TrainConfig", "build_model", "lr_at", "train"]


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
        default=True, metadata={"help": "continue from <out>/checkpoint.pt when it exists"}
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
    weight_decay: float = field(
        default=5e-4, metadata={"help": "weight decay (not applied to norms and biases)"}
    )
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear LR warm-up, in epochs"})
    augment: Augment = field(
        default="basic",
        metadata={"help": "none | basic (crop+flip) | randaugment (+RandAugment, erasing)"},
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    ema_decay: float = field(
        default=0.0, metadata={"help": "EMA of weights, evaluated as eval_ema/* (0: off)"}
    )
    amp: bool = field(default=True, metadata={"help": "bf16 autocast (CUDA only)"})
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
        default=None, metadata={"help": "train on the first N training images only"}
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

    def __post_init__(self) -> None:
        parse_data(self.data)
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.regularizer == "label-smoothing" else 0.0
        if self.dropout is None:
            self.dropout = 0.1 if self.regularizer == "dropout" else 0.0
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_inclusive=False)
        check_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        check_range("confidence_penalty", self.confidence_penalty, low=0.0)
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "eval_every"):
            check_range(name, getattr(self, name), low=1)
        check_positive("lr", self.lr)
        check_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0, high_inclusive=False)
        check_range("workers", self.workers, low=0)
        check_range("checkpoint_every", self.checkpoint_every, low=0)
        check_range("calibration_holdout", self.calibration_holdout, 0.0, 0.5)
        for name in ("max_steps", "train_subset"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1)
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
    """The config's model for ``data``, wrapped with the ERA head when ``regularizer == "era"``."""
    model = get_model(
        cfg.model,
        data.num_classes,
        in_chans=data.in_chans,
        image_size=data.image_size,
        drop_rate=cfg.dropout or 0.0,
    )
    if cfg.regularizer == "era":
        model = with_era(model, cfg.min_entropy, tau=cfg.era_tau, calibration=cfg.era_calibration)
    return model


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Norm weights and biases (1-d parameters) are not decayed, as in timm and torchvision.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag so that the loop can checkpoint before it exits."""

    def __init__(self) -> None:
        self.signum = 0

    def __enter__(self) -> "_Interrupt":
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def requested(self, ctx: Dist) -> bool:
        """Whether any rank was signalled (all ranks must stop at the same step)."""
        flag = torch.tensor(self.signum)
        if ctx.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = int(flag)
        return self.signum > 0


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


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) a run and evaluate it on the test split.

    Args:
        cfg: The run's configuration.

    Returns:
        ``status`` ("finished", "paused" at ``max_steps``, or "interrupted" by a signal),
        ``signal``, ``step``, and the final test ``metrics`` (None unless finished or paused):
        one row per head and calibration, and the ``evaluation`` they come from (with this
        rank's test logits), see ``era_vision.calibration``.
    """
    ctx = setup(cfg.device)
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    data = load_data(cfg.data, cfg.download)
    base, holdout = split_holdout(data.train, cfg.calibration_holdout, cfg.seed)
    if cfg.train_subset is not None:
        check_range("train_subset", cfg.train_subset, 1, len(base), why=f"{cfg.data} train split")
        base = Subset(base, range(cfg.train_subset))
    train_set = AugmentedDataset(base, build_transform(cfg.augment, data, train=True), cfg.seed)
    test_set = AugmentedDataset(data.test, build_transform("none", data, train=False), cfg.seed)
    if holdout is not None:
        holdout = AugmentedDataset(holdout, build_transform("none", data, train=False), cfg.seed)

    micro_batch, rest = divmod(cfg.batch_size, ctx.world_size * cfg.grad_accum)
    if rest or micro_batch == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be a multiple of world size {ctx.world_size} "
            f"x grad_accum {cfg.grad_accum}"
        )
    sampler = ResumableSampler(train_set, ctx.world_size, ctx.rank, cfg.seed)
    # Its own generator: creating an iterator must not consume the global RNG (dropout's).
    loader = DataLoader(
        train_set,
        micro_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    steps_per_epoch = len(loader) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={cfg.batch_size} exceeds the {len(train_set)} training images"
        )
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    end = total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps)

    # Same initial weights on every rank; then per-rank streams for dropout.
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, data)
    if cfg.dist_bn == "sync":
        if ctx.device.type != "cuda":
            raise ValueError("dist_bn='sync' (SyncBatchNorm) needs CUDA; use reduce or broadcast")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(ctx.device, memory_format=memory_format)
    optimizer = _optimizer(cfg, net)
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    torch.manual_seed(cfg.seed + 1 + ctx.rank)

    step, checkpoint_path = 0, run_dir / "checkpoint.pt"
    resumed = cfg.resume and checkpoint_path.exists()
    if resumed:
        state = torch.load(checkpoint_path, map_location=ctx.device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step = state["step"]
        if len(state["rng"]) == ctx.world_size:
            torch.set_rng_state(state["rng"][ctx.rank]["cpu"].cpu())
            if state["rng"][ctx.rank]["cuda"] is not None and ctx.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"][ctx.rank]["cuda"].cpu(), ctx.device)
        else:  # another world size: continue with fresh, still deterministic, streams
            torch.manual_seed(cfg.seed + 1 + ctx.rank + 1_000_003 * step)

    model: nn.Module = net
    if ctx.world_size > 1:
        model = DistributedDataParallel(
            net,
            device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
            broadcast_buffers=cfg.dist_bn == "broadcast",
        )
    ddp = model
    if cfg.compile:
        model = torch.compile(model)
    logger = None
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        logger = MetricLogger(run_dir, resume_step=step if resumed else None)

    def save() -> None:
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "step": step,
            "rng": _rng_state(ctx),
            "config": asdict(cfg),
        }
        if ctx.main:
            atomic_save(state, checkpoint_path)

    def run_eval(epoch: int) -> Any:
        # Rows per head (era, plain) and calibrated (false, true): eval.csv, eval_ema.csv.
        args = (test_set, holdout, ctx, cfg.batch_size, cfg.workers, memory_format, cfg.amp)
        evaluation = evaluate_heads(net, *args)
        models = {"eval": evaluation}
        if ema is not None:
            models["eval_ema"] = evaluate_heads(ema.module, *args)
        if logger is not None:
            for group, result in models.items():
                logger.log_rows(group, step, {tag(r): {"epoch": epoch} | r for r in result.rows})
        return evaluation

    loss_fn = cfg.loss_fn()
    autocast = torch.autocast(
        ctx.device.type, torch.bfloat16, enabled=cfg.amp and ctx.device.type == "cuda"
    )
    progress = tqdm(total=end, initial=step, disable=not ctx.main, desc=run_dir.name)
    sums = torch.zeros(3, device=ctx.device)  # steps, loss, entropy since the last log
    last_eval: tuple[int, Any] | None = None
    with _Interrupt() as interrupt:
        while step < end and not interrupt.signum:
            epoch, done = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            sampler.start = done * micro_batch * cfg.grad_accum
            batches = iter(loader)
            net.train()
            while done < steps_per_epoch and step < end:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total_steps, warmup_steps, cfg.lr)
                for micro in range(cfg.grad_accum):
                    images, labels = next(batches)
                    images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
                    labels = labels.to(ctx.device, non_blocking=True)
                    last = micro == cfg.grad_accum - 1
                    # Gradients are all-reduced once per optimizer step, on the last micro-batch.
                    sync = ddp.no_sync() if ctx.world_size > 1 and not last else nullcontext()
                    with sync:
                        with autocast:
                            logits = model(images)
                            loss = loss_fn(logits, labels)
                        (loss / cfg.grad_accum).backward()
                    with torch.no_grad():
                        entropy = categorical_entropy(logits.detach().float()).mean()
                        sums += (
                            torch.stack([loss.new_tensor(1.0), loss.detach(), entropy])
                            / cfg.grad_accum
                        )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(net)
                step, done = step + 1, done + 1
                progress.update()
                if step % cfg.log_every == 0:
                    if ctx.world_size > 1:
                        dist.all_reduce(sums)
                    count, loss_sum, entropy_sum = sums.tolist()
                    train_log = {
                        "train/loss": loss_sum / count,
                        "train/entropy": entropy_sum / count,
                        "train/lr": optimizer.param_groups[0]["lr"],
                        "train/epoch": step / steps_per_epoch,
                    }
                    if logger is not None:
                        logger.log(step, train_log)
                    progress.set_postfix(loss=f"{train_log['train/loss']:.4f}")
                    sums.zero_()
                if interrupt.requested(ctx):
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save()
            if done == steps_per_epoch:
                if cfg.dist_bn == "reduce" and ctx.world_size > 1:
                    average_bn_stats(net)
                if (epoch + 1) % cfg.eval_every == 0 or step == total_steps:
                    last_eval = (step, run_eval(epoch + 1))
            save()
    progress.close()

    result: dict[str, Any] = {
        "status": "finished",
        "signal": interrupt.signum,
        "step": step,
        "metrics": None,
        "evaluation": None,
    }
    if interrupt.signum:
        result["status"] = "interrupted"
    else:
        if step < total_steps:
            result["status"] = "paused"
        if last_eval is None or last_eval[0] != step:
            last_eval = (step, run_eval(step / steps_per_epoch))
        result["metrics"], result["evaluation"] = last_eval[1].rows, last_eval[1]
        if ctx.main:
            write_report(last_eval[1], run_dir, "eval")
    if logger is not None:
        logger.close()
    return result
