import pytest
import torch

from era_core.testing import cpu_and_cuda
from era_llm.policy import TokenScorer, load_model


def _batch(device):
    # Two prompts (the second left-padded) followed by responses (the first right-padded).
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 0], [0, 6, 7, 9, 10, 11]], device=device)
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], device=device)
    return input_ids, attention, 3


def _reference(model, input_ids, attention, start, scale):
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logits = logits[:, start - 1 : -1]
    labels = input_ids[:, start:]
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    scaled = logits * (1.0 if scale is None else scale.unsqueeze(-1))
    return scaled.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1), entropy


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("with_scale", [False, True])
def test_scorer_matches_full_logits(tiny_model_dir, device, with_scale):
    model = load_model(str(tiny_model_dir), device)
    input_ids, attention, start = _batch(device)
    scale = torch.tensor([[2.0, 2.0, 1.0], [0.5, 1.0, 1.0]], device=device) if with_scale else None
    logprobs, entropy, _ = TokenScorer(model, chunk_size=2)(input_ids, attention, start, scale)
    (logprobs.sum() + entropy.sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_logprobs, ref_entropy = _reference(model, input_ids, attention, start, scale)
    (ref_logprobs.sum() + ref_entropy.sum()).backward()
    torch.testing.assert_close(logprobs, ref_logprobs)
    torch.testing.assert_close(entropy, ref_entropy)
    for got, want in zip(grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_float64_model_with_a_logit_scale(tiny_model_dir):
    # A scaled and an unscaled part are scored separately and copied into one tensor; a
    # float64 model's parts are float64, so that tensor must be too.
    model = load_model(str(tiny_model_dir), dtype=torch.float64)
    input_ids, attention, start = _batch("cpu")
    scale = torch.tensor([[2.0, 2.0, 1.0], [0.5, 1.0, 1.0]], dtype=torch.float64)
    logprobs, entropy, _ = TokenScorer(model, chunk_size=2)(input_ids, attention, start, scale)
    assert logprobs.dtype == entropy.dtype == torch.float64
    ref_logprobs, ref_entropy = _reference(model, input_ids, attention, start, scale)
    torch.testing.assert_close(logprobs, ref_logprobs)
    torch.testing.assert_close(entropy, ref_entropy)


def test_topk_logprobs_renormalise_over_the_top_logits(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    input_ids, attention, start = _batch("cpu")
    scorer = TokenScorer(model, chunk_size=4, topk=3, topk_mode="renormalise")
    logprobs, entropy, _ = scorer(input_ids, attention, start)
    ref_logprobs, ref_entropy = _reference(model, input_ids, attention, start, None)
    torch.testing.assert_close(entropy, ref_entropy)
    # Renormalising over fewer classes can only raise a log-probability.
    assert torch.all(logprobs >= ref_logprobs - 1e-6) and torch.all(logprobs <= 0)
    logprobs.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_topk_mask_is_the_default_and_masks_tokens_outside_the_top_k(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    input_ids, attention, start = _batch("cpu")
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # Make each first response token the model's top choice (the prompt alone decides it).
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    input_ids[:, start] = logits[:, start - 1].argmax(-1)
    scorer = TokenScorer(model, chunk_size=4, topk=3)
    assert scorer.topk_mode == "mask"
    logprobs, _, _ = scorer(input_ids, attention, start)
    renormalised, _, _ = TokenScorer(model, chunk_size=4, topk=3, topk_mode="renormalise")(
        input_ids, attention, start
    )
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    top = logits[:, start - 1 : -1].topk(3, dim=-1).indices
    inside = (top == input_ids[:, start:, None]).any(-1)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(logprobs[inside], renormalised[inside])
    assert torch.all(logprobs[~inside] == -1e4)
    # The masked tokens give no gradient: only the inside ones move the weights.
    (logprobs * (~inside)).sum().backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_scorer_divides_logits_by_the_temperature(tiny_model_dir, temperature):
    model = load_model(str(tiny_model_dir))
    input_ids, attention, start = _batch("cpu")
    logprobs, entropy, _ = TokenScorer(model, chunk_size=2, temperature=temperature)(
        input_ids, attention, start
    )
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    tempered = (logits[:, start - 1 : -1] / temperature).log_softmax(-1)
    labels = input_ids[:, start:]
    torch.testing.assert_close(logprobs, tempered.gather(-1, labels[..., None]).squeeze(-1))
    torch.testing.assert_close(entropy, -(tempered.exp() * tempered).sum(-1))


@pytest.mark.gpu
def test_scorer_under_bf16_autocast_is_close_to_fp32(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "cuda")
    input_ids, attention, start = _batch("cuda")
    scorer = TokenScorer(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logprobs, entropy, _ = scorer(input_ids, attention, start)
    assert logprobs.dtype == torch.float32
    ref_logprobs, ref_entropy, _ = scorer(input_ids, attention, start)
    torch.testing.assert_close(logprobs, ref_logprobs, atol=0.05, rtol=0.05)
    torch.testing.assert_close(entropy, ref_entropy, atol=0.05, rtol=0.05)


def test_missing_model_path_is_a_clear_error(tmp_path):
    from era_llm.errors import UsageError
    from era_llm.policy import load_tokenizer

    with pytest.raises(UsageError, match=r"model: cannot load .*no such directory"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "not-a-model" / "sub").mkdir(parents=True)
    for load in (load_model, load_tokenizer):
        with pytest.raises(UsageError, match=r"model: cannot load .*a directory without a model"):
            load(str(tmp_path / "not-a-model"))


def test_inline_shaping_matches_an_explicit_scale(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    input_ids, attention, start = _batch("cpu")
    scorer = TokenScorer(model)
    seen = []

    def shaping(entropy):
        seen.append(entropy)
        return torch.where(entropy > entropy.median(), 2.0, 1.0)

    logprobs, entropy, shaping_entropy = scorer(input_ids, attention, start, shaping=shaping)
    assert shaping_entropy is seen[0] and not shaping_entropy.requires_grad
    torch.testing.assert_close(shaping_entropy, entropy.detach())
    explicit, _, none = scorer(input_ids, attention, start, shaping(shaping_entropy))
    assert none is None
    torch.testing.assert_close(logprobs, explicit)
