"""CUDA results equal CPU results; bf16 and large-vocabulary paths (marked ``gpu``)."""

import pytest
import torch

from era_core.entropy import linear_logprobs_and_entropy, logprobs_and_entropy
from era_core.functional import gaussian_era, softmax_era, token_era

pytestmark = pytest.mark.gpu
QWEN_VOCAB = 151_936


@pytest.mark.parametrize("calibration", ["paper", "tight"])
def test_softmax_era_cuda_matches_cpu(calibration):
    logits = torch.randn(64, 1000) * 8
    logits[:4, 500:] = -torch.inf
    cpu = softmax_era(logits.requires_grad_(True), 1.2, calibration=calibration)
    (grad_cpu,) = torch.autograd.grad(cpu.logsumexp(-1).sum(), logits)
    cuda_logits = logits.detach().cuda().requires_grad_(True)
    cuda = softmax_era(cuda_logits, 1.2, calibration=calibration)
    (grad_cuda,) = torch.autograd.grad(cuda.logsumexp(-1).sum(), cuda_logits)
    torch.testing.assert_close(cuda.cpu(), cpu, equal_nan=True)
    torch.testing.assert_close(grad_cuda.cpu(), grad_cpu)


def test_softmax_era_bf16_on_cuda():
    logits = (torch.randn(256, 32000, device="cuda") * 20).bfloat16()
    out = softmax_era(logits, 0.6)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    entropy = torch.distributions.Categorical(logits=out.double()).entropy()
    assert (entropy >= 0.6 - 1e-4).all()


def test_gaussian_and_token_era_cuda_match_cpu():
    raw = torch.randn(32, 17)
    torch.testing.assert_close(gaussian_era(raw.cuda(), 2.0).cpu(), gaussian_era(raw, 2.0))
    logits, entropy, adv = torch.randn(4, 8, 50), torch.rand(4) * 4, torch.randn(4, 8)
    for cpu, cuda in zip(
        token_era(logits, entropy, adv), token_era(logits.cuda(), entropy.cuda(), adv.cuda())
    ):
        torch.testing.assert_close(cuda.cpu(), cpu)


def test_chunked_entropy_on_qwen_vocabulary_bf16():
    tokens = 512
    logits = (torch.randn(tokens, QWEN_VOCAB, device="cuda") * 3).bfloat16().requires_grad_(True)
    labels = torch.randint(0, QWEN_VOCAB, (tokens,), device="cuda")
    logprobs, entropy = logprobs_and_entropy(logits, labels, chunk_size=128)
    (grad,) = torch.autograd.grad((logprobs + entropy).sum(), logits)
    log_p = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(
        logprobs, log_p.gather(-1, labels[:, None]).squeeze(-1), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(-1), rtol=1e-4, atol=1e-4)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_linear_pass_on_qwen_vocabulary_matches_naive_and_saves_memory():
    tokens, width = 1024, 896
    hidden = (
        (torch.randn(tokens, width, device="cuda") / width**0.5).bfloat16().requires_grad_(True)
    )
    weight = torch.randn(QWEN_VOCAB, width, device="cuda").bfloat16().requires_grad_(True)
    labels = torch.randint(0, QWEN_VOCAB, (tokens,), device="cuda")
    scale = torch.where(torch.rand(tokens, device="cuda") < 0.5, 2.0, 1.0)

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logprobs, entropy = linear_logprobs_and_entropy(hidden, weight, labels, 256, scale)
    grads = torch.autograd.grad((logprobs + entropy).sum(), (hidden, weight))
    chunked_peak = torch.cuda.max_memory_allocated() - base

    torch.cuda.reset_peak_memory_stats()
    logits = (hidden @ weight.T).float()
    ref_entropy = torch.distributions.Categorical(logits=logits).entropy()
    ref_logprobs = (
        torch.log_softmax(logits * scale[:, None], -1).gather(-1, labels[:, None]).squeeze(-1)
    )
    ref_grads = torch.autograd.grad((ref_logprobs + ref_entropy).sum(), (hidden, weight))
    naive_peak = torch.cuda.max_memory_allocated() - base

    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-3, atol=1e-3)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert chunked_peak < naive_peak / 2
