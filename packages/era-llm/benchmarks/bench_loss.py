"""Time and peak memory of the policy-loss pass (forward + backward): GRPO vs GRPO-ERA.

Vocabulary 151,936 (Qwen2.5) with a small decoder on CPU, or the Qwen2.5-0.5B shape on
CUDA (``--device cuda``). Each variant runs in a fresh subprocess so its peak memory is
its own (CPU: peak RSS above the RSS before the pass; CUDA: max allocated above the
allocation before it).

Variants (TokenScorer = era-core's chunked linear log-probs + entropy, default chunking):
- ``grpo``: TokenScorer + GRPO objective.
- ``grpo-era``: ERA's logit scale and rescaled advantages from given behaviour entropies;
  half the responses are below the floor and half the advantages positive, so about a
  quarter of the tokens are scaled.
- ``grpo-era-all-scaled``: the worst case, every token scaled.
- ``grpo-era-step``: what an on-policy training step runs: the scale is decided inside the
  forward from that pass's own entropies (an extra no-grad pass through the output
  projection), on a random model whose entropies put half the responses outside the band.
- ``naive``: GRPO on materialised float32 logits (``model(...).logits``), for scale.

    python packages/era-llm/benchmarks/bench_loss.py [--device cuda] [--repeats 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHAPES = {
    # A small decoder: the vocabulary projection dominates, which is what ERA touches.
    "cpu": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        batch=4,
        prompt=32,
        response=256,
    ),
    # Qwen2.5-0.5B.
    "cuda": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        batch=8,
        prompt=128,
        response=1024,
    ),
}
VARIANTS = ("grpo", "grpo-era", "grpo-era-all-scaled", "grpo-era-step", "naive")


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_variant(variant: str, device: str, repeats: int) -> dict[str, float]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from era_llm.losses import LOSSES, LossConfig, PolicyTerms
    from era_llm.policy import TokenScorer, enable_activation_checkpointing

    torch.manual_seed(0)
    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
    shape = dict(SHAPES[device])
    batch, prompt, response = shape.pop("batch"), shape.pop("prompt"), shape.pop("response")
    config = Qwen2Config(vocab_size=151936, tie_word_embeddings=True, **shape)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    if device == "cuda":
        enable_activation_checkpointing(model)
    model.train()
    ids = torch.randint(0, 151936, (batch, prompt + response), device=device)
    attention = torch.ones_like(ids)
    mask = torch.ones(batch, response, device=device)
    # Responses alternate above/below ERA's floor and between A > 0 and A < 0.
    row = torch.arange(batch, device=device)[:, None]
    advantages = torch.where(row % 4 < 2, 1.0, -1.0).expand(batch, response).contiguous()
    low = (row % 2 == 0) | (variant == "grpo-era-all-scaled")
    behaviour_entropy = torch.where(low, 0.1, 1.0).expand(batch, response)
    if variant == "grpo-era-all-scaled":
        advantages = advantages.abs()
    scorer = TokenScorer(model)
    algo = "grpo" if variant in ("grpo", "naive") else "grpo-era"
    cfg = LossConfig(algo=algo)
    loss = LOSSES[algo]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        with autocast:
            scale, adv = None, advantages
            shaping = None
            if variant == "grpo-era-step":
                shaping = lambda entropy: loss.shaping(entropy, advantages, mask, cfg)[0]  # noqa: E731
            elif variant in ("grpo-era", "grpo-era-all-scaled"):
                scale, adv = loss.shaping(behaviour_entropy, advantages, mask, cfg)
            if variant == "naive":
                logits = (
                    model(input_ids=ids, attention_mask=attention)
                    .logits[:, prompt - 1 : -1]
                    .float()
                )
                log_p = logits.log_softmax(-1)
                logprobs = log_p.gather(-1, ids[:, prompt:, None]).squeeze(-1)
                entropy = -(log_p.exp() * log_p).sum(-1)
            else:
                logprobs, entropy, shaping_entropy = scorer(ids, attention, prompt, scale, shaping)
                if shaping_entropy is not None:
                    _, adv = loss.shaping(shaping_entropy, advantages, mask, cfg)
            terms = PolicyTerms(
                logprobs, logprobs.detach(), adv, mask, entropy, normaliser=mask.sum().item()
            )
            value, _ = loss.objective(terms, cfg)
        value.backward()
        model.zero_grad(set_to_none=True)

    scaled_frac = 0.0
    if variant.startswith("grpo-era") and variant != "grpo-era-step":
        scaled_frac = (
            (loss.shaping(behaviour_entropy, advantages, mask, cfg)[0] != 1).float().mean().item()
        )

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocator, kernels); also creates the gradient buffers once
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
        before = _rss_mib("VmRSS:")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = (
        (torch.cuda.max_memory_allocated() - before) / 2**20
        if device == "cuda"
        else _rss_mib("VmHWM:") - before
    )
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_extra_mib": peak,
        "tokens": batch * response,
        "scaled_frac": scaled_frac,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: measure one variant, print JSON
        print(json.dumps(run_variant(args.variant, args.device, args.repeats)))
        return
    results = {}
    for variant in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--repeats",
            str(args.repeats),
            "--variant",
            variant,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    base = results["grpo"]
    print(
        f"\nloss pass (forward + backward), vocab 151,936, device {args.device}, {base['tokens']} response tokens"
    )
    print(f"{'variant':<20} {'median s':>9} {'vs grpo':>8} {'peak extra MiB':>15} {'vs grpo':>8}")
    for variant, r in results.items():
        print(
            f"{variant:<20} {r['median_s']:>9.3f} {r['median_s'] / base['median_s']:>7.2f}x "
            f"{r['peak_extra_mib']:>15.0f} {r['peak_extra_mib'] - base['peak_extra_mib']:>+8.0f}"
        )
    era = results["grpo-era"]
    verdict = {
        "era_time_ratio": era["median_s"] / base["median_s"],
        "era_time_within_10pct": era["median_s"] <= 1.10 * base["median_s"],
        "era_extra_peak_mib": era["peak_extra_mib"] - base["peak_extra_mib"],
    }
    print(json.dumps(verdict))
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": args.device,
        "shape": SHAPES[args.device],
        "repeats": args.repeats,
        "results": results,
        **verdict,
    }
    if args.device == "cuda":
        payload["gpu"] = torch.cuda.get_device_name()
    (RESULTS / f"bench_loss_{args.device}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
