"""What the trainer and LoRA tests share: a reward with signal, and a tiny CPU run's config."""

from era_llm.trainer import TrainConfig


def parity_reward(completion: str, gold: str, **_) -> float:
    """A reward a random tiny model earns about half the time, so groups carry signal."""
    return float(len(completion) % 2 == 0)


def tiny_train_config(model_dir, data, out, **overrides) -> TrainConfig:
    """Three steps of the tiny model on CPU; ``overrides`` replace any field."""
    base = dict(
        model=str(model_dir),
        data=str(data),
        output_dir=str(out),
        max_steps=3,
        prompts_per_step=4,
        num_generations=4,
        micro_batch_size=16,
        max_new_tokens=6,
        prompt_template="{prompt}",
        lr=1e-2,
        device="cpu",
        save_every=10,
    )
    return TrainConfig(**(base | overrides))
