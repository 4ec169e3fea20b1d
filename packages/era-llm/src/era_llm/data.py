"""Local math datasets (jsonl, json, parquet) with field mapping, prompt formatting and sampling."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ANSWER_FIELDS",
    "DEFAULT_TEMPLATE",
    "PROMPT_FIELDS",
    "Example",
    "PromptSampler",
    "encode_prompt",
    "gold_answer",
    "load_examples",
    "read_records",
]

# Tried in order when no field is named: the shared math sets use question/problem and
# answer/solution (MATH500 has both answer and solution; the short answer wins).
PROMPT_FIELDS = ("prompt", "question", "problem")
ANSWER_FIELDS = ("answer", "final_answer", "solution")
DEFAULT_TEMPLATE = (
    "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
)


@dataclass(frozen=True)
class Example:
    r"""One problem: the question text and its gold reference.

    Attributes:
        prompt: The question, before templating.
        answer: A final answer (``"204"``, ``"\frac{1}{2}"``) or a worked solution whose
            last ``\boxed{}`` holds the answer.
    """

    prompt: str
    answer: str


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"data: {path} must hold a JSON list of objects")
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise ValueError(
        f"data: unsupported file type {suffix!r} ({path}); use .jsonl, .json or .parquet"
    )


def gold_answer(value: Any) -> str:
    """The gold reference as text; GSM8K-style ``"... #### 18"`` keeps only ``"18"``."""
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    return text


def _pick_field(
    record: dict[str, Any], candidates: tuple[str, ...], option: str, path: Path
) -> str:
    for name in candidates:
        if name in record:
            return name
    raise ValueError(
        f"data: {path} has none of the fields {list(candidates)}; its fields are {sorted(record)} "
        f"(name one with {option})"
    )


def load_examples(
    path: str | Path, prompt_field: str | None = None, answer_field: str | None = None
) -> list[Example]:
    """Load problems, mapping dataset-specific field names to ``Example``.

    Args:
        path: A ``.jsonl``, ``.json`` or ``.parquet`` file.
        prompt_field: Field holding the question; ``None`` tries ``PROMPT_FIELDS`` in order.
        answer_field: Field holding the gold answer; ``None`` tries ``ANSWER_FIELDS`` in order.

    Raises:
        ValueError: The file is empty or a record lacks the chosen fields.
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise ValueError(f"data: {path} holds no records")
    prompt_field = prompt_field or _pick_field(records[0], PROMPT_FIELDS, "--prompt-field", path)
    answer_field = answer_field or _pick_field(records[0], ANSWER_FIELDS, "--answer-field", path)
    examples = []
    for index, record in enumerate(records):
        for name, option in ((prompt_field, "--prompt-field"), (answer_field, "--answer-field")):
            if name not in record:
                raise ValueError(
                    f"data: record {index} of {path} has no field {name!r} ({option}); "
                    f"its fields are {sorted(record)}"
                )
        examples.append(Example(str(record[prompt_field]), gold_answer(record[answer_field])))
    return examples


def encode_prompt(tokenizer: Any, prompt: str, template: str, chat_template: bool) -> list[int]:
    """Token ids of a templated prompt, through the tokenizer's chat template when it has one.

    Args:
        tokenizer: A transformers tokenizer.
        prompt: The question.
        template: Text with a ``{prompt}`` placeholder (other braces are kept as they are).
        chat_template: Wrap the text as a user turn with ``apply_chat_template`` when the
            tokenizer defines a chat template.
    """
    text = template.replace("{prompt}", prompt)
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return tokenizer(rendered, add_special_tokens=False).input_ids
    return tokenizer(text).input_ids


class PromptSampler:
    """Endless shuffled passes over ``num_examples`` indices, sharded across ranks.

    Pass ``e`` is a permutation drawn from ``seed + e``; rank ``r`` of ``w`` takes every
    ``w``-th index of it, so ranks never share a prompt within a pass. The position is
    part of ``state_dict`` so a resumed run sees the same prompts.
    """

    def __init__(self, num_examples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_examples < world_size:
            raise ValueError(
                f"data: {num_examples} examples cannot be shared by {world_size} ranks"
            )
        self.num_examples, self.seed, self.rank, self.world_size = (
            num_examples,
            seed,
            rank,
            world_size,
        )
        self.epoch, self.position = 0, 0
        self._order = self._shard(0)

    def _shard(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        permutation = torch.randperm(self.num_examples, generator=generator).tolist()
        return permutation[self.rank :: self.world_size][: self.num_examples // self.world_size]

    def next(self) -> int:
        """The next example index of this rank."""
        if self.position == len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._shard(self.epoch)
        self.position += 1
        return self._order[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        """Pass number and position within it."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a ``state_dict``."""
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shard(self.epoch)
