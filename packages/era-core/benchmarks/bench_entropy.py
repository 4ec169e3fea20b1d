"""Peak memory and time of the chunked log-prob/entropy passes against the naive ones.

    python packages/era-core/benchmarks/bench_entropy.py [--device cuda] [--tokens 8192]

Naive: full logits (``lm_head`` matmul), float32 ``log_softmax``, gather and entropy.
Ours: ``logprobs_and_entropy`` (from given logits) and ``linear_logprobs_and_entropy``
(from hidden states; full logits never exist). Each variant runs forward+backward in a
fresh process so CPU peak RSS is its own. Targets (issue 2): peak <= 1/4 of naive, time <= 1.3x.
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch
from _harness import default_device, print_table, synchronize, write_json

from era_core.entropy import linear_logprobs_and_entropy, logprobs_and_entropy

VOCAB = 151_936
WIDTH = 896  # Qwen2.5-0.5B hidden size


def naive_from_logits(logits, labels, chunk=None):
    log_p = torch.log_softmax(logits.float(), -1)
    return log_p.gather(-1, labels[:, None]).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def naive_linear(hidden, weight, labels, chunk=None):
    return naive_from_logits(hidden @ weight.T, labels)


class RssPeak:
    """Highest resident set size seen while the block runs, sampled every 0.2 ms."""

    def __enter__(self) -> "RssPeak":
        self.base = self.peak = _rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(2e-4)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


VARIANTS = {
    "naive (logits given)": ("logits", naive_from_logits),
    "logprobs_and_entropy": ("logits", lambda z, y, chunk: logprobs_and_entropy(z, y, chunk)),
    "naive (lm_head + log_softmax)": ("hidden", naive_linear),
    "linear_logprobs_and_entropy": (
        "hidden",
        lambda h, w, y, chunk: linear_logprobs_and_entropy(h, w, y, chunk),
    ),
}


def worker(name: str, device: str, tokens: int, repeats: int, chunk: int) -> dict[str, float]:
    """Run one variant; report its median time and its peak memory above the inputs."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kind, fn = VARIANTS[name]
    labels = torch.randint(0, VOCAB, (tokens,), device=device)
    hidden = (
        torch.randn(tokens, WIDTH, device=device).div_(WIDTH**0.5).to(dtype).requires_grad_(True)
    )
    weight = torch.randn(VOCAB, WIDTH, device=device).mul_(0.02).to(dtype).requires_grad_(True)
    if kind == "logits":
        inputs = ((hidden @ weight.T).detach().requires_grad_(True), labels)
        leaves = inputs[:1]
    else:
        inputs, leaves = (hidden, weight, labels), (hidden, weight)

    def step():
        logprobs, entropy = fn(*inputs, chunk)
        torch.autograd.grad((logprobs + 0.1 * entropy).sum(), leaves)

    # Peak memory of one step above the inputs: CUDA's allocator counts it exactly; on CPU
    # large tensors are mmap'd and unmapped on free, so sampled RSS follows live memory.
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with RssPeak() as rss:
            step()
        peak = rss.peak - rss.base
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": sorted(times)[len(times) // 2], "peak_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=default_device())
    parser.add_argument(
        "--tokens", type=int, default=None, help="default: 8192 on cuda, 512 on cpu"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--chunk-size", type=int, default=256, help="tokens per chunk (memory/time trade-off)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens = args.tokens or (8192 if args.device == "cuda" else 512)
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, tokens, args.repeats, args.chunk_size)))
        return

    results = {}
    for name in VARIANTS:
        command = [sys.executable, __file__, "--worker", name, "--device", args.device]
        command += [
            "--tokens",
            str(tokens),
            "--repeats",
            str(args.repeats),
            "--chunk-size",
            str(args.chunk_size),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])

    rows, records = [], []
    for naive, ours in [
        ("naive (logits given)", "logprobs_and_entropy"),
        ("naive (lm_head + log_softmax)", "linear_logprobs_and_entropy"),
    ]:
        a, b = results[naive], results[ours]
        mem_ratio, time_ratio = b["peak_mib"] / a["peak_mib"], b["ms"] / a["ms"]
        rows.append([ours, a["peak_mib"], b["peak_mib"], mem_ratio, a["ms"], b["ms"], time_ratio])
        records.append(
            {
                "variant": ours,
                "naive": a,
                "ours": b,
                "memory_ratio": mem_ratio,
                "time_ratio": time_ratio,
            }
        )
    dtype = "bf16" if args.device == "cuda" else "fp32"
    print_table(
        f"fwd+bwd at vocab {VOCAB}, {tokens} tokens, chunks of {args.chunk_size}, {dtype}, {args.device}"
        " (targets: memory <= 0.25x, time <= 1.3x)",
        ["variant", "naive MiB", "ours MiB", "mem ratio", "naive ms", "ours ms", "time ratio"],
        rows,
    )
    write_json(
        "entropy",
        args.device,
        [{**r, "tokens": tokens, "chunk_size": args.chunk_size} for r in records],
    )


if __name__ == "__main__":
    main()
