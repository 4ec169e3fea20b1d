"""Local math datasets (jsonl, json, parquet) with field mapping, prompt formatting and sampling."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError  # what chat templates raise (jinja2 comes with torch)

from era_llm.errors import UsageError

__all__ = [
    "ANSWER_FIELDS",
    "DEFAULT_TEMPLATE",
    "PROMPT_FIELDS",
    "Example",
    "Prompt",
    "PromptSampler",
    "check_template",
    "encode_prompt",
    "field_value",
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


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` has the ``{prompt}`` placeholder.

    Without it every question would become the same prompt.
    """
    if "{prompt}" not in template:
        raise ValueError(
            f"prompt_template must contain {{prompt}}, where each question goes, got {template!r}"
        )


Prompt = str | list[dict[str, str]]
"""A question: text, or chat messages ``[{"role": ..., "content": ...}, ...]``."""


@dataclass(frozen=True)
class Example:
    r"""One problem: the question and its gold reference.

    Attributes:
        prompt: The question before templating: text, or chat messages.
        answer: A final answer (``"204"``, ``"\frac{1}{2}"``) or a worked solution whose
            last ``\boxed{}`` holds the answer.
    """

    prompt: Prompt
    answer: str


def _malformed_json(path: Path) -> UsageError | None:
    """The first malformed JSON line (or JSON error) of ``path``, with its line number."""
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            return UsageError(f"data: {path}:{error.lineno}: malformed JSON ({error.msg})")
        if not isinstance(rows, list):
            return UsageError(f"data: {path} must hold a JSON list of objects")
        return None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                return UsageError(f"data: {path}:{number}: malformed JSON line ({error.msg})")
    return None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file, as dicts.

    Read through ``datasets`` (nested columns, such as chat-message prompts, stay nested).

    Raises:
        UsageError: No such file, another file type, or a file that does not parse (a
            malformed JSON line is named with its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise UsageError(
            f"data: unsupported file type {suffix!r} ({path}); use .jsonl, .json or .parquet"
        )
    if suffix != ".parquet" and not path.read_text().strip():
        raise UsageError(f"data: {path} holds no records")
    import datasets
    import pyarrow as pa
    from datasets.exceptions import DatasetsError

    try:
        dataset = datasets.load_dataset(
            "parquet" if suffix == ".parquet" else "json", data_files=str(path), split="train"
        )
    except (DatasetsError, pa.ArrowException, ValueError) as error:
        malformed = _malformed_json(path) if suffix != ".parquet" else None
        cause = error.__cause__ or error
        raise malformed or UsageError(
            f"data: cannot read {path} ({str(cause).splitlines()[0] if str(cause) else type(cause).__name__})"
        ) from error
    if suffix == ".json" and (malformed := _malformed_json(path)):
        raise malformed  # e.g. one object rather than a list: datasets reads it as a row
    return dataset.to_list()


def gold_answer(value: Any) -> str:
    """The gold reference as text; GSM8K-style ``"... #### 18"`` keeps only ``"18"``."""
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    return text


def field_value(record: dict[str, Any], name: str) -> Any:
    """``record[name]``; a dotted name (``reward_model.ground_truth``) walks nested fields.

    Raises:
        KeyError: A part of the path is missing.
    """
    if name in record:
        return record[name]
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _has_field(record: dict[str, Any], name: str) -> bool:
    try:
        field_value(record, name)
    except KeyError:
        return False
    return True


def _pick_field(
    record: dict[str, Any], candidates: tuple[str, ...], option: str, path: Path
) -> str:
    for name in candidates:
        if name in record:
            return name
    raise UsageError(
        f"data: {path} has none of the fields {list(candidates)}; its fields are {sorted(record)} "
        f"(name one with {option})"
    )


def _prompt(value: Any, where: str) -> Prompt:
    """A question: text, or a chat as a list of ``{"role", "content"}`` messages."""
    if isinstance(value, str) and value.strip():
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UsageError(
        f"data: {where}: the prompt must be non-empty text or a list of chat messages "
        f"with role and content, got {type(value).__name__} {str(value)[:60]!r}"
    )


def _answer(value: Any, where: str) -> str:
    """A gold answer: text or a number (not a list, a mapping or null)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(
            f"data: {where}: the answer must be text or a number, got "
            f"{type(value).__name__} {str(value)[:60]!r}"
        )
    return gold_answer(value)


def load_examples(
    path: str | Path, prompt_field: str | None = None, answer_field: str | None = None
) -> list[Example]:
    """Load problems, mapping dataset-specific field names to ``Example``.

    Args:
        path: A ``.jsonl``, ``.json`` or ``.parquet`` file.
        prompt_field: Field holding the question (a dotted path such as ``prompt`` or
            ``extra.question`` for nested fields); ``None`` tries ``PROMPT_FIELDS`` in order.
            Its values are text or chat-message lists (DAPO-Math-17k's ``prompt``).
        answer_field: Field holding the gold answer (dotted, e.g.
            ``reward_model.ground_truth``); ``None`` tries ``ANSWER_FIELDS`` in order.

    Raises:
        UsageError: The file is empty, a record lacks the chosen fields, a prompt is not
            text or messages, an answer is not text or a number, or every answer is empty.
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise UsageError(f"data: {path} holds no records")
    prompt_field = prompt_field or _pick_field(records[0], PROMPT_FIELDS, "--prompt-field", path)
    answer_field = answer_field or _pick_field(records[0], ANSWER_FIELDS, "--answer-field", path)
    examples = []
    for index, record in enumerate(records):
        where = f"record {index} of {path}"
        for name, option in ((prompt_field, "--prompt-field"), (answer_field, "--answer-field")):
            if not _has_field(record, name):
                raise UsageError(
                    f"data: {where} has no field {name!r} ({option}); its fields are {sorted(record)}"
                )
        examples.append(
            Example(
                _prompt(field_value(record, prompt_field), where),
                _answer(field_value(record, answer_field), where),
            )
        )
    if not any(e.answer.strip() for e in examples):
        raise UsageError(f"data: every answer in {path} is empty (field {answer_field!r})")
    return examples


def encode_prompt(tokenizer: Any, prompt: Prompt, template: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt, through the tokenizer's chat template when it has one.

    Args:
        tokenizer: A transformers tokenizer.
        prompt: The question as text, or as chat messages (rendered as they are, system turn
            included; ``template`` is for text prompts only).
        template: Text with a ``{prompt}`` placeholder (other braces are kept as they are).
        chat_template: Wrap text as a user turn with ``apply_chat_template`` when the
            tokenizer defines a chat template.

    Raises:
        UsageError: Chat messages, but no chat template to render them with, or one that
            refuses them (an unknown role).
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, list):
        if not (chat_template and has_template):
            raise UsageError(
                "data: the prompts are chat messages, which need the tokenizer's chat template "
                "(the model has none, or --no-chat-template was given)"
            )
        messages = prompt
    elif chat_template and has_template:
        messages = [{"role": "user", "content": template.replace("{prompt}", prompt)}]
    else:
        return tokenizer(template.replace("{prompt}", prompt)).input_ids
    try:
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
    except TemplateError as error:  # the template's own raise_exception, e.g. an unknown role
        roles = [m.get("role") for m in messages]
        raise UsageError(
            f"data: the tokenizer's chat template refuses a prompt with roles {roles}: {error}"
        ) from error
    return tokenizer(rendered, add_special_tokens=False).input_ids


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
