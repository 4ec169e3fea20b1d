"""TD-MPC2-ERA and TD-MPC2 (Hansen, Su, Wang, ICLR 2024) for N seeds at once.

TD-MPC2 learns an implicit world model in a latent space and plans in it:

- an **encoder** maps observations to a latent ``z`` normalised by SimNorm (softmax over
  groups of ``simnorm_dim``); a **dynamics** MLP predicts the next latent from ``(z, a)``;
- a **reward** head and an ensemble of ``num_q`` **Q** heads (dropout in the first layer)
  regress onto two-hot targets over ``num_bins`` bins in symlog space; a Polyak-averaged copy
  of the Q heads gives TD targets;
- a **policy prior** ``pi(a|z)`` trained to maximise Q (scaled by a running 5-95 % range);
- **MPPI planning** over ``horizon`` steps: ``num_pi_trajs`` trajectories from the prior
  and Gaussian samples around a mean warm-started from the previous step's plan, scored by
  predicted rewards plus a bootstrapped Q, refined ``iterations`` times on ``num_elites``.

Losses on sub-trajectories of ``horizon`` steps: latent consistency (``next(z_t, a_t)`` vs the
encoded next observation), reward and value cross-entropies, all weighted by ``rho^t``.

The two algorithms differ only in the policy prior (the planner's own Gaussian is the same):

- **TD-MPC2**: a tanh-squashed Gaussian with ``log_std`` squashed into
  ``[log_std_min, log_std_max]``, and an entropy bonus ``entropy_coef * D * H`` in its loss.
- **TD-MPC2-ERA**: ``N(tanh(mu), sigma)`` truncated to ``[-1, 1]`` with
  ``log sigma = truncated_gaussian_era(tanh(mu), raw, H0)`` (as SAC-ERA): the prior that
  samples has entropy ``>= H0`` in every latent state, by construction. Its loss has no
  entropy term. The planner uses the prior's samples for its ``num_pi_trajs`` trajectories
  and for the bootstrap action at the horizon, and the TD target's action, so the floor
  acts there.

Seeds are a batched ensemble: every network is an ensemble with one member per seed (``num_q``
per seed for the Q heads), and all noise (dropout, Q-head subsets, planner samples, replay
windows) comes from the seed's generator, so seed ``s`` trains as it would alone.
"""

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from era_control import envs, offpolicy, rng
from era_control.buffers import SequenceReplayBuffer, Trajectory
from era_control.config import RunConfig, help_field
from era_control.distributions import TanhNormal, TruncatedTanhNormal
from era_control.entropy_floor import SAC_TARGET_PER_DIM, check_target_entropy
from era_control.networks import EnsembleLayerNorm, EnsembleLinear, clip_grad_norm_per_seed_
from era_core.functional import truncated_gaussian_era, truncated_normal_entropy_bounds
from era_core.validation import check_positive, check_range

__all__ = [
    "MODEL_SIZES",
    "PRESETS",
    "TDMPC2",
    "TDMPC2Config",
    "evaluation_policy",
    "resolve_save_buffer",
    "train",
    "two_hot",
    "two_hot_decode",
]

# TD-MPC2's published model sizes (millions of parameters): encoder width, MLP width, latent
# size, encoder layers, Q heads. "tiny" is ours, for tests.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"enc_dim": 32, "mlp_dim": 32, "latent_dim": 16, "num_enc_layers": 2, "num_q": 2},
    "1M": {"enc_dim": 256, "mlp_dim": 384, "latent_dim": 128, "num_enc_layers": 2, "num_q": 2},
    "5M": {"enc_dim": 256, "mlp_dim": 512, "latent_dim": 512, "num_enc_layers": 2, "num_q": 5},
    "19M": {"enc_dim": 1024, "mlp_dim": 1024, "latent_dim": 768, "num_enc_layers": 3, "num_q": 5},
    "48M": {"enc_dim": 1792, "mlp_dim": 1792, "latent_dim": 768, "num_enc_layers": 4, "num_q": 5},
}


@dataclasses.dataclass
class TDMPC2Config(RunConfig):
    """``era-control train tdmpc2``: TD-MPC2-ERA by default, TD-MPC2 with ``--no-era``."""

    eval_every: int = help_field(20_000, "env steps between deterministic evaluations (planning)")
    eval_episodes: int = help_field(10, "episodes per seed in each evaluation")
    era: bool = help_field(
        True, "TD-MPC2-ERA (entropy floor on the policy prior); --no-era: TD-MPC2"
    )
    target_entropy: float | None = help_field(
        None,
        f"ERA: floor of the prior's entropy PER ACTION DIM in nats (default: SAC's {SAC_TARGET_PER_DIM:g})",
    )
    model_size: Literal["tiny", "1M", "5M", "19M", "48M"] = help_field(
        "5M", "TD-MPC2's model size (sets enc_dim, mlp_dim, latent_dim, num_enc_layers, num_q)"
    )
    mpc: bool = help_field(True, "act by MPPI planning; --no-mpc: by the policy prior alone")
    horizon: int = help_field(3, "planning horizon, and length of the training sub-trajectories")
    iterations: int = help_field(
        6, "MPPI iterations (TD-MPC2 adds 2 for action spaces of 20+ dims)"
    )
    num_samples: int = help_field(512, "trajectories per MPPI iteration")
    num_elites: int = help_field(64, "elite trajectories that refit the planner's Gaussian")
    num_pi_trajs: int = help_field(24, "of num_samples, trajectories sampled from the policy prior")
    min_std: float = help_field(0.05, "lower bound of the planner's action std")
    max_std: float = help_field(2.0, "initial and upper bound of the planner's action std")
    temperature: float = help_field(0.5, "MPPI temperature of the elites' weights")
    simnorm_dim: int = help_field(8, "SimNorm group size of the latent")
    num_bins: int = help_field(101, "two-hot bins of the reward and Q heads")
    vmin: float = help_field(-10.0, "lowest bin, in symlog space")
    vmax: float = help_field(10.0, "highest bin, in symlog space")
    dropout: float = help_field(0.01, "dropout in the first layer of the Q heads")
    log_std_min: float = help_field(-10.0, "lower bound of the prior's log-std")
    log_std_max: float = help_field(2.0, "upper bound of the prior's log-std")
    entropy_coef: float | None = help_field(
        None, "prior's entropy bonus (default: TD-MPC2's 1e-4; 0 with ERA, which allows no other)"
    )
    lr: float = help_field(3e-4, "Adam learning rate")
    enc_lr_scale: float = help_field(0.3, "encoder learning rate, relative to lr")
    grad_clip_norm: float = help_field(20.0, "gradient-norm clip, per seed")
    rho: float = help_field(0.5, "temporal weight rho^t of the losses over the horizon")
    consistency_coef: float = help_field(20.0, "weight of the latent consistency loss")
    reward_coef: float = help_field(0.1, "weight of the reward loss")
    value_coef: float = help_field(0.1, "weight of the value loss")
    tau: float = help_field(0.01, "Polyak rate of the target Q heads and the value scale")
    discount: float | None = help_field(
        None,
        "discount (default: TD-MPC2's heuristic from the episode length L: (L/5 - 1)/(L/5) in [0.95, 0.995])",
    )
    batch_size: int = help_field(256, "sub-trajectories per seed per update")
    buffer_size: int = help_field(1_000_000, "replay capacity per seed (capped at steps)")
    learning_starts: int | None = help_field(
        None,
        "env steps of uniform random actions; then as many updates at once, then one per step "
        "(default: max(1000, 5 episodes), as TD-MPC2's seed_steps)",
    )
    save_buffer: bool | None = help_field(
        None,
        "store the replay buffer in checkpoints, so --resume continues exactly (default: when "
        "it fits in the free space of --out, twice over)",
    )

    def __post_init__(self) -> None:
        """Validate and resolve the env-dependent defaults; every error names the flag."""
        super().__post_init__()
        check_range(
            "log_std_min", self.log_std_min, None, self.log_std_max, high_inclusive=False,
            why=f"must be below log_std_max={self.log_std_max:g}",
        )  # fmt: skip
        if self.era:
            per_dim = SAC_TARGET_PER_DIM if self.target_entropy is None else self.target_entropy
            check_target_entropy(per_dim, True, self.log_std_max)
            h_max = truncated_normal_entropy_bounds(self.log_std_min, self.log_std_max)[1]
            check_range(
                "target_entropy", per_dim, None, h_max, high_inclusive=False,
                why=f"per action dim: the maximum of ERA's truncated normal with log_std_max={self.log_std_max:g}",
            )  # fmt: skip
        elif self.target_entropy is not None:
            raise ValueError(
                "target_entropy is ERA's floor: drop it with --no-era (TD-MPC2 has no target)"
            )
        if self.entropy_coef is None:
            self.entropy_coef = 0.0 if self.era else 1e-4
        if self.era and self.entropy_coef != 0.0:
            raise ValueError(
                f"entropy_coef must be 0 with ERA (the activation replaces the entropy bonus), "
                f"got {self.entropy_coef:g}; use --no-era for TD-MPC2 with its bonus"
            )
        check_range("entropy_coef", self.entropy_coef, 0.0)
        for name in (
            "horizon",
            "iterations",
            "num_samples",
            "num_elites",
            "simnorm_dim",
            "batch_size",
        ):
            check_range(name, getattr(self, name), 1)
        check_range("num_bins", self.num_bins, 2)
        check_range("num_pi_trajs", self.num_pi_trajs, 0, self.num_samples - 1,
                    why=f"below num_samples={self.num_samples}: some trajectories must be Gaussian samples")  # fmt: skip
        check_range("num_elites", self.num_elites, 1, self.num_samples,
                    why=f"at most num_samples={self.num_samples}")  # fmt: skip
        check_range(
            "vmin",
            self.vmin,
            None,
            self.vmax,
            high_inclusive=False,
            why=f"below vmax={self.vmax:g}",
        )
        check_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        for name in (
            "min_std",
            "lr",
            "enc_lr_scale",
            "grad_clip_norm",
            "temperature",
            "consistency_coef",
        ):
            check_positive(name, getattr(self, name))
        check_range("max_std", self.max_std, self.min_std, why=f"at least min_std={self.min_std:g}")
        check_range("rho", self.rho, 0.0, 1.0, low_inclusive=False)
        check_range("tau", self.tau, 0.0, 1.0, low_inclusive=False)
        for name in ("reward_coef", "value_coef"):
            check_range(name, getattr(self, name), 0.0)
        if MODEL_SIZES[self.model_size]["latent_dim"] % self.simnorm_dim:
            raise ValueError(
                f"simnorm_dim must divide the latent size {MODEL_SIZES[self.model_size]['latent_dim']} "
                f"of model_size {self.model_size}, got {self.simnorm_dim}"
            )
        length = envs.resolve_env_id(self.env).max_episode_steps or 1000
        if self.discount is None:
            frac = length / 5
            self.discount = min(max((frac - 1) / frac, 0.95), 0.995)
        check_range("discount", self.discount, 0.0, 1.0, high_inclusive=False)
        if self.learning_starts is None:
            self.learning_starts = min(max(1000, 5 * length), self.steps - 1)
        check_range(
            "learning_starts", self.learning_starts, self.horizon, self.steps, high_inclusive=False,
            why=f"in [horizon={self.horizon}, steps={self.steps}): the first updates need whole "
            "sub-trajectories, and a run must leave steps to learn",
        )  # fmt: skip
        check_range(
            "buffer_size", self.buffer_size, self.horizon, why=f"at least horizon={self.horizon}"
        )

    def approximate_resume(self) -> str | None:
        """Why a resume of this run cannot continue exactly, or ``None``."""
        if self.save_buffer is False:
            return (
                "approximate: checkpoints hold no replay buffer (save_buffer: false), so a "
                "resume refills it from scratch and does not reproduce an uninterrupted run"
            )
        return None

    def entropy_target(self, action_dim: int) -> float:
        """ERA's ``H0`` in nats for an ``action_dim``-dim action space."""
        per_dim = SAC_TARGET_PER_DIM if self.target_entropy is None else self.target_entropy
        return per_dim * action_dim

    def size(self, key: str) -> int:
        """One architecture number of :attr:`model_size`."""
        return MODEL_SIZES[self.model_size][key]


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's TD-MPC2 row: DMC dog and humanoid, 1M steps, TD-MPC2's 5M default model.
    "paper": {"steps": 1_000_000, "model_size": "5M", "eval_every": 50_000, "eval_episodes": 10},
}


# --- two-hot regression in symlog space --------------------------------------------------


def symlog(x: Tensor) -> Tensor:
    """``sign(x) log(1 + |x|)``."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """The inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def two_hot(x: Tensor, num_bins: int, vmin: float, vmax: float) -> Tensor:
    """Soft two-hot encoding of ``symlog(x)`` over ``num_bins`` bins on ``[vmin, vmax]``.

    Shape ``(*batch,) -> (*batch, num_bins)``; values beyond the range go to the end bins.
    """
    width = (vmax - vmin) / (num_bins - 1)
    position = (symlog(x).clamp(vmin, vmax) - vmin) / width
    low = position.floor().clamp(max=num_bins - 2)
    upper_weight = (position - low).unsqueeze(-1)
    low = low.long().unsqueeze(-1)
    out = torch.zeros(*x.shape, num_bins, dtype=x.dtype, device=x.device)
    return out.scatter(-1, low, 1.0 - upper_weight).scatter(-1, low + 1, upper_weight)


def two_hot_decode(probs: Tensor, vmin: float, vmax: float) -> Tensor:
    """The value of bin probabilities ``(*batch, num_bins) -> (*batch,)``: symexp of their mean bin."""
    bins = torch.linspace(vmin, vmax, probs.shape[-1], dtype=probs.dtype, device=probs.device)
    return symexp((probs * bins).sum(-1))


# --- networks -----------------------------------------------------------------------------


class _Mlp(nn.Module):
    """TD-MPC2's MLP for an ensemble: ``Linear -> LayerNorm -> Mish`` layers, then the output.

    The output layer is plain linear, or ``Linear -> LayerNorm -> SimNorm`` (``simnorm``
    groups) for latents. ``dropout`` applies after the first linear layer when the caller
    passes a mask.
    """

    linears: nn.ModuleList
    norms: nn.ModuleList

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        simnorm: int | None,
        device: torch.device,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden, out_features]
        linears = [EnsembleLinear(generators, a, b, device) for a, b in itertools.pairwise(widths)]
        with torch.no_grad():  # TD-MPC2's init: weights ~ N(0, 0.02), zero biases
            for layer in linears:
                for m, gen in enumerate(generators):
                    nn.init.trunc_normal_(layer.weight[m], std=0.02, generator=gen)
                layer.bias.zero_()
        self.linears = nn.ModuleList(linears)
        normed = len(hidden) + (simnorm is not None)
        self.norms = nn.ModuleList(
            EnsembleLayerNorm(len(generators), w, device) for w in widths[1 : 1 + normed]
        )
        self.simnorm = simnorm

    @property
    def output(self) -> EnsembleLinear:
        """The output layer."""
        return cast(EnsembleLinear, self.linears[-1])

    def forward(self, x: Tensor, dropout_mask: Tensor | None = None) -> Tensor:
        """Shape: ``(members, batch, in) -> (members, batch, out)``."""
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i == 0 and dropout_mask is not None:
                x = x * dropout_mask
            if i < len(self.norms):
                x = self.norms[i](x)
            if i < len(self.linears) - 1:
                x = nn.functional.mish(x)
        if self.simnorm is not None:
            x = x.unflatten(-1, (-1, self.simnorm)).softmax(-1).flatten(-2)
        return x


def _flat(x: Tensor) -> Tensor:
    """``(seeds, *batch, features) -> (seeds, prod(batch), features)``, for the ensembles."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


class TDMPC2(nn.Module):
    """World model, policy prior, target Q heads, value scale and planner state of N seeds.

    Args:
        cfg: The run's config.
        generators: One generator per seed (initial weights and all sampling noise).
        obs_dim: Observation size.
        action_dim: Action size (actions live in ``[-1, 1]``).
        device: Where parameters live.
    """

    value_scale: Tensor
    plan_mean: Tensor

    def __init__(
        self,
        cfg: TDMPC2Config,
        generators: list[torch.Generator],
        obs_dim: int,
        action_dim: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.cfg, self.generators, seeds = cfg, generators, len(generators)
        self.obs_dim, self.action_dim, self.device = obs_dim, action_dim, device
        latent, mlp, num_q = cfg.size("latent_dim"), cfg.size("mlp_dim"), cfg.size("num_q")
        self.num_q = num_q
        enc_hidden = [cfg.size("enc_dim")] * max(cfg.size("num_enc_layers") - 1, 1)
        self.encoder = _Mlp(generators, obs_dim, enc_hidden, latent, cfg.simnorm_dim, device)
        self.dynamics = _Mlp(
            generators, latent + action_dim, [mlp, mlp], latent, cfg.simnorm_dim, device
        )
        self.reward = _Mlp(generators, latent + action_dim, [mlp, mlp], cfg.num_bins, None, device)
        self.pi = _Mlp(generators, latent, [mlp, mlp], 2 * action_dim, None, device)
        q_members = [
            g for g in generators for _ in range(num_q)
        ]  # members s*num_q .. belong to seed s
        self.qs = _Mlp(q_members, latent + action_dim, [mlp, mlp], cfg.num_bins, None, device)
        with torch.no_grad():  # predictions start at 0 (TD-MPC2's zero-initialised output layers)
            self.reward.output.weight.zero_()
            self.qs.output.weight.zero_()
        self.target_qs = _Mlp(
            q_members, latent + action_dim, [mlp, mlp], cfg.num_bins, None, device
        )
        self.target_qs.load_state_dict(self.qs.state_dict())
        self.target_qs.requires_grad_(False)
        self.target_entropy = cfg.entropy_target(action_dim)
        # Running 5-95 % range of Q, per seed, that scales the prior's loss; and the planner's
        # last mean per seed (a warm start), both saved with the agent.
        self.register_buffer("value_scale", torch.ones(seeds, device=device))
        self.register_buffer(
            "plan_mean", torch.zeros(seeds, cfg.horizon, action_dim, device=device)
        )
        self.eval_plan_mean = torch.zeros_like(self.plan_mean)  # evaluation's own warm start
        model_params = [
            {"params": self.encoder.parameters(), "lr": cfg.lr * cfg.enc_lr_scale},
            {
                "params": [
                    *self.dynamics.parameters(),
                    *self.reward.parameters(),
                    *self.qs.parameters(),
                ]
            },
        ]
        self.model_opt = torch.optim.Adam(model_params, lr=cfg.lr)
        self.pi_opt = torch.optim.Adam(self.pi.parameters(), lr=cfg.lr, eps=1e-5)
        self.iterations = cfg.iterations + 2 * int(action_dim >= 20)  # TD-MPC2's heuristic

    # --- the world model ---

    def encode(self, obs: Tensor) -> Tensor:
        """Latent of observations ``(seeds, *batch, obs_dim) -> (seeds, *batch, latent)``."""
        return self.encoder(_flat(obs)).view(*obs.shape[:-1], -1)

    def next(self, z: Tensor, action: Tensor) -> Tensor:
        """Predicted next latent, same shape as ``z``."""
        return self.dynamics(_flat(torch.cat([z, action], -1))).view(z.shape)

    def reward_logits(self, z: Tensor, action: Tensor) -> Tensor:
        """Reward bin logits ``(seeds, *batch, num_bins)``."""
        return self.reward(_flat(torch.cat([z, action], -1))).view(*z.shape[:-1], -1)

    def q_logits(
        self, z: Tensor, action: Tensor, target: bool = False, dropout: bool = False
    ) -> Tensor:
        """Bin logits of every Q head, ``(seeds, num_q, *batch, num_bins)``."""
        x = _flat(torch.cat([z, action], -1)).repeat_interleave(self.num_q, dim=0)
        mask = None
        if dropout and self.cfg.dropout > 0:
            keep = rng.rand(
                self.generators, (self.num_q, x.shape[1], self.cfg.size("mlp_dim")), self.device
            )
            mask = (keep >= self.cfg.dropout).to(x.dtype).flatten(0, 1) / (1.0 - self.cfg.dropout)
        out = (self.target_qs if target else self.qs)(x, mask)
        return out.view(z.shape[0], self.num_q, *z.shape[1:-1], -1)

    def q_value(self, z: Tensor, action: Tensor, reduce: Literal["min", "avg"], target: bool = False, dropout: bool = False) -> Tensor:  # fmt: skip
        """Min or mean of two Q heads drawn per seed (TD-MPC2's subset), ``(seeds, *batch)``."""
        logits = self.q_logits(z, action, target, dropout)
        pick = torch.stack([torch.randperm(self.num_q, generator=g, device=self.device)[:2] for g in self.generators])  # fmt: skip
        index = pick.view(*pick.shape, *[1] * (logits.dim() - 2)).expand(-1, -1, *logits.shape[2:])
        values = two_hot_decode(logits.gather(1, index).softmax(-1), self.cfg.vmin, self.cfg.vmax)
        return values.min(1).values if reduce == "min" else values.mean(1)

    def prior(self, z: Tensor) -> TanhNormal | TruncatedTanhNormal:
        """The policy prior at latents ``(seeds, batch, latent)``."""
        mean, raw = self.pi(z).chunk(2, dim=-1)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        if self.cfg.era:
            log_std = truncated_gaussian_era(torch.tanh(mean), raw, self.target_entropy, lo, hi)
            return TruncatedTanhNormal(mean, log_std)
        return TanhNormal(mean, lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1.0))

    def prior_action(self, z: Tensor) -> Tensor:
        """One action of the prior per latent, any ``(seeds, *batch, latent)``."""
        return self.prior(_flat(z)).sample(self.generators).action.view(*z.shape[:-1], -1)

    # --- planning ---

    @torch.no_grad()
    def plan(self, obs: Tensor, first: Tensor, deterministic: bool) -> Tensor:
        """MPPI in the latent space: one action per seed, ``(seeds, obs_dim) -> (seeds, action_dim)``.

        ``first`` marks seeds whose episode just began (their warm start is dropped).
        """
        cfg, S, H, A = self.cfg, obs.shape[0], self.cfg.horizon, self.action_dim
        N, P, K = cfg.num_samples, cfg.num_pi_trajs, cfg.num_elites
        z = self.encode(obs.unsqueeze(1))  # (S, 1, latent)
        actions = torch.empty(S, N, H, A, device=self.device)
        if P > 0:  # trajectories of the prior, through the learnt dynamics
            zp = z.expand(S, P, z.shape[-1])
            for t in range(H):
                actions[:, :P, t] = self.prior_action(zp)
                if t < H - 1:
                    zp = self.next(zp, actions[:, :P, t])
        warm = self.eval_plan_mean if deterministic else self.plan_mean
        mean = torch.zeros(S, H, A, device=self.device)
        mean[:, :-1] = torch.where(first.view(S, 1, 1), 0.0, warm[:, 1:])
        std = torch.full((S, H, A), cfg.max_std, device=self.device)
        z = z.expand(S, N, z.shape[-1])
        score = elite_actions = None
        for _ in range(self.iterations):
            noise = rng.randn(self.generators, (N - P, H, A), self.device)
            actions[:, P:] = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1.0, 1.0)
            value = self._trajectory_value(z, actions).nan_to_num(0.0)  # (S, N)
            elite_value, elite = value.topk(K, dim=1)
            elite_actions = actions.gather(1, elite.view(S, K, 1, 1).expand(S, K, H, A))
            score = torch.softmax(cfg.temperature * elite_value, dim=1).view(S, K, 1, 1)
            mean = (score * elite_actions).sum(1)
            std = (score * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1).sqrt().clamp(cfg.min_std, cfg.max_std)  # fmt: skip
        assert score is not None and elite_actions is not None  # iterations >= 1
        # One elite trajectory, drawn by its weight, gives the first action.
        pick = torch.cat([torch.multinomial(score[s].flatten(), 1, generator=g) for s, g in enumerate(self.generators)])  # fmt: skip
        action = elite_actions[torch.arange(S, device=self.device), pick, 0]
        if not deterministic:
            action = action + std[:, 0] * rng.randn(self.generators, (A,), self.device)
        warm.copy_(mean)
        return action.clamp(-1.0, 1.0)

    def _trajectory_value(self, z: Tensor, actions: Tensor) -> Tensor:
        """Predicted discounted return of action sequences ``(S, N, H, A)`` from latents ``(S, N, latent)``."""
        assert self.cfg.discount is not None  # TDMPC2Config.__post_init__ resolves it
        total, discount = torch.zeros(z.shape[:2], device=self.device), 1.0
        for t in range(self.cfg.horizon):
            reward = self.reward_logits(z, actions[:, :, t]).softmax(-1)
            total = total + discount * two_hot_decode(reward, self.cfg.vmin, self.cfg.vmax)
            z = self.next(z, actions[:, :, t])
            discount *= self.cfg.discount
        return total + discount * self.q_value(z, self.prior_action(z), "avg")

    # --- the off-policy loop's interface (offpolicy.py) ---

    @torch.no_grad()
    def act(self, obs: Tensor, first: Tensor, deterministic: bool = False) -> Tensor:
        """Plan (``mpc``) or sample the prior; ``(seeds, obs_dim) -> (seeds, action_dim)``."""
        if self.cfg.mpc:
            return self.plan(obs, first, deterministic)
        prior = self.prior(self.encode(obs.unsqueeze(1)))
        return (prior.mode() if deterministic else prior.sample(self.generators).action).squeeze(1)

    def explore(self, obs: Tensor, first: Tensor) -> Tensor:
        """An exploring action per seed."""
        return self.act(obs, first)

    def updates_due(self, step: int, stored: int) -> int:
        """TD-MPC2's schedule: ``learning_starts`` updates at once when it is reached, then one per step."""
        start = self.cfg.learning_starts
        assert start is not None  # TDMPC2Config.__post_init__ resolves it
        return start if step == start else int(step > start)

    def learn(self, buffer: SequenceReplayBuffer) -> dict[str, Tensor]:
        """One :meth:`update` on sub-trajectories drawn from ``buffer``."""
        return self.update(buffer.sample_sequences(self.cfg.batch_size, self.generators))

    def evaluation_policy(self) -> "Planner":
        """The deterministic policy (the planner's mean, or the prior's mode) for ``envs.evaluate``."""
        return Planner(self)

    # --- learning ---

    def update(self, batch: Trajectory) -> dict[str, Tensor]:
        """One gradient step of the world model and the prior, and the target Q heads.

        Losses are averaged within a seed and summed over seeds, so each seed gets the
        gradient it would get alone. Returns per-seed metrics.
        """
        cfg, H = self.cfg, self.cfg.horizon
        assert cfg.discount is not None
        rho = cfg.rho ** torch.arange(H, device=self.device, dtype=torch.float32)  # (H,)
        with torch.no_grad():  # targets: encoded next observations and TD targets
            next_z = self.encode(batch.obs[:, 1:])  # (S, H, B, latent)
            live = 1.0 - batch.terminated
            td = batch.reward + cfg.discount * live * self.q_value(
                next_z, self.prior_action(next_z), "min", target=True
            )

        # Latent rollout from the first observation through the learnt dynamics.
        z = self.encode(batch.obs[:, 0])
        zs, consistency = [z], torch.zeros(batch.obs.shape[0], device=self.device)
        for t in range(H):
            z = self.next(z, batch.action[:, t])
            consistency = consistency + rho[t] * (z - next_z[:, t]).pow(2).mean(dim=(1, 2))
            zs.append(z)
        rollout = torch.stack(zs, dim=1)  # (S, H + 1, B, latent)
        z_t = rollout[:, :-1]
        reward_ce = _soft_cross_entropy(
            self.reward_logits(z_t, batch.action), batch.reward, cfg
        )  # (S, H, B)
        q_ce = _soft_cross_entropy(
            self.q_logits(z_t, batch.action, dropout=True), td.unsqueeze(1), cfg
        )
        reward_loss = (reward_ce.mean(-1) * rho).sum(-1) / H
        value_loss = (q_ce.mean(-1) * rho).sum(dim=(1, 2)) / (H * self.num_q)
        consistency = consistency / H
        model_loss = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss  # fmt: skip
        model_params = [p for group in self.model_opt.param_groups for p in group["params"]]
        self.model_opt.zero_grad(set_to_none=True)
        model_loss.sum().backward()
        grad_norm = clip_grad_norm_per_seed_(model_params, cfg.grad_clip_norm, len(self.generators))
        self.model_opt.step()

        # The prior: maximise the scaled Q over the (detached) rollout, rho-weighted in time.
        latents = rollout.detach()
        prior = self.prior(_flat(latents))
        sample = prior.sample(self.generators)
        self.qs.requires_grad_(False)  # the prior's loss must not move the Q heads
        q = self.q_value(
            latents, sample.action.view(*latents.shape[:-1], -1), "avg", dropout=True
        )  # (S, H+1, B)
        self.qs.requires_grad_(True)
        with torch.no_grad():
            low, high = torch.quantile(
                q[:, 0], torch.tensor([0.05, 0.95], device=self.device), dim=-1
            )
            self.value_scale.lerp_((high - low).clamp(min=1.0), cfg.tau)
        objective = q / self.value_scale.view(-1, 1, 1)
        entropy = sample.entropy.view(q.shape)  # what samples: closed form (ERA) or -log pi
        if cfg.entropy_coef:  # TD-MPC2's bonus, scaled by the action size as its code does
            objective = objective + cfg.entropy_coef * self.action_dim * entropy
        pi_rho = cfg.rho ** torch.arange(q.shape[1], device=self.device, dtype=torch.float32)
        pi_loss = -(objective.mean(-1) * pi_rho).mean(-1)
        self.pi_opt.zero_grad(set_to_none=True)
        pi_loss.sum().backward()
        clip_grad_norm_per_seed_(
            list(self.pi.parameters()), cfg.grad_clip_norm, len(self.generators)
        )
        self.pi_opt.step()

        with torch.no_grad():
            for target, online in zip(
                self.target_qs.parameters(), self.qs.parameters(), strict=True
            ):
                target.lerp_(online, cfg.tau)
        metrics = {
            "loss/consistency": consistency.detach(), "loss/reward": reward_loss.detach(),
            "loss/value": value_loss.detach(), "loss/prior": pi_loss.detach(),
            "tdmpc2/grad_norm": grad_norm, "tdmpc2/value_scale": self.value_scale.clone(),
            "entropy/executed": entropy.detach().mean(dim=(1, 2)),
            "entropy/executed_min": entropy.detach().flatten(1).min(-1).values,
            "entropy/gaussian": prior.gaussian_entropy().detach().mean(-1),
        }  # fmt: skip
        if cfg.era:
            metrics["entropy/target"] = torch.full_like(consistency, self.target_entropy)
        return metrics

    def optimizer_state(self) -> dict[str, Any]:
        """Optimiser states, for checkpoints."""
        return {"model": self.model_opt.state_dict(), "pi": self.pi_opt.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`optimizer_state`."""
        self.model_opt.load_state_dict(state["model"])
        self.pi_opt.load_state_dict(state["pi"])


def _soft_cross_entropy(logits: Tensor, value: Tensor, cfg: TDMPC2Config) -> Tensor:
    """Cross-entropy of bin ``logits`` against the two-hot encoding of ``value`` (per element)."""
    target = two_hot(value, cfg.num_bins, cfg.vmin, cfg.vmax)
    return -(target * logits.log_softmax(-1)).sum(-1)


class Planner:
    """The deterministic policy of a TD-MPC2 agent for ``envs.evaluate``: plans without noise.

    ``reset()`` (called by ``envs.evaluate`` when every env starts an episode) drops the
    warm start; between resets each step continues the previous plan.
    """

    def __init__(self, agent: TDMPC2) -> None:
        self.agent = agent
        self.first = torch.ones(len(agent.generators), dtype=torch.bool, device=agent.device)

    def reset(self) -> None:
        """Every env starts a new episode."""
        self.first.fill_(True)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observation, device=self.agent.device)
        action = self.agent.act(obs, self.first, deterministic=True)
        self.first.fill_(False)
        return action.cpu().numpy()


def resolve_save_buffer(cfg: TDMPC2Config, obs_dim: int, action_dim: int) -> TDMPC2Config:
    """``cfg`` with ``save_buffer`` decided from the replay buffer's size."""
    capacity = min(cfg.buffer_size, cfg.steps)
    nbytes = SequenceReplayBuffer.stored_bytes(capacity, cfg.seeds, obs_dim, action_dim)
    return offpolicy.resolve_save_buffer(cfg, nbytes)


def build(cfg: TDMPC2Config, device: torch.device) -> TDMPC2:
    """The agent of a fresh run."""
    obs_dim, action_dim = envs.env_dims(cfg.env)
    return TDMPC2(cfg, rng.generators(cfg.seed_list(), device), obs_dim, action_dim, device)


def train(
    cfg: TDMPC2Config,
    run_dir: str | Path,
    resume: bool = False,
    on_checkpoint: Callable[[], None] | None = None,
) -> int:
    """Train (or resume) a run in ``run_dir``; returns a process exit code (see ``offpolicy.train``)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = cfg.torch_device()
    agent = build(cfg, device)
    if cfg.save_buffer is None:  # called without runs.start_run, which decides it
        cfg = resolve_save_buffer(cfg, agent.obs_dim, agent.action_dim)
    capacity = min(cfg.buffer_size, cfg.steps)
    buffer = SequenceReplayBuffer(
        capacity, cfg.seeds, agent.obs_dim, agent.action_dim, cfg.horizon, device
    )
    train_envs = envs.make_vector_env(cfg.env, cfg.seeds)
    return offpolicy.train(
        cfg, "tdmpc2", Path(run_dir), resume, on_checkpoint, agent, buffer, train_envs
    )


def evaluation_policy(cfg: TDMPC2Config, state: dict[str, Any], device: torch.device) -> Planner:
    """The deterministic policy ``obs (seeds, obs_dim) -> actions`` stored in a checkpoint."""
    agent = build(cfg, device)
    agent.load_state_dict(state["agent"])
    return agent.evaluation_policy()
