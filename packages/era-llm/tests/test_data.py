import json

import pytest

from era_llm.data import PromptSampler, encode_prompt, gold_answer, load_examples, read_records
from era_llm.rewards import last_boxed, math_verify_reward

SHARED_FILES = {
    "aime24.jsonl": 30,
    "aime25.jsonl": 30,
    "amc23.jsonl": 40,
    "gsm8k.jsonl": 1319,
    "math500.jsonl": 500,
    "minerva_math.jsonl": 272,
}


@pytest.mark.parametrize(("name", "count"), SHARED_FILES.items())
def test_shared_math_sets_load_with_detected_fields(shared_math, name, count):
    examples = load_examples(shared_math / name)
    assert len(examples) == count
    assert all(e.prompt.strip() and e.answer.strip() for e in examples)
    # The gold reference grades its own answer (boxed) as correct.
    for example in examples[:5]:
        answer = last_boxed(example.answer) if "\\boxed" in example.answer else example.answer
        assert math_verify_reward(f"\\boxed{{{answer}}}", example.answer) == 1.0, example


def test_gsm8k_answers_are_the_final_numbers(shared_math):
    examples = load_examples(shared_math / "gsm8k.jsonl")
    assert examples[0].answer == "18"
    assert all("####" not in e.answer for e in examples)


def test_minerva_uses_the_solution_as_gold(shared_math):
    examples = load_examples(shared_math / "minerva_math.jsonl")
    assert all("\\boxed" in e.answer for e in examples)


def test_field_mapping_and_missing_fields(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"q": "1+1=", "a": 2}) + "\n")
    with pytest.raises(ValueError, match=r"none of the fields .*'q'"):
        load_examples(path)
    examples = load_examples(path, prompt_field="q", answer_field="a")
    assert (examples[0].prompt, examples[0].answer) == ("1+1=", "2")
    with pytest.raises(ValueError, match="no field 'answer'"):
        load_examples(path, prompt_field="q", answer_field="answer")


def test_a_record_missing_the_field_is_named(tmp_path):
    path = tmp_path / "ragged.jsonl"
    path.write_text(
        json.dumps({"question": "a", "answer": "1"}) + "\n" + json.dumps({"question": "b"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"record 1 .* no field 'answer'"):
        load_examples(path)


def test_parquet_and_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": "2+2=", "solution": "so \\boxed{4}"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for name in ("d.parquet", "d.json"):
        (example,) = load_examples(tmp_path / name)
        assert example.prompt == "2+2=" and example.answer == "so \\boxed{4}"


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_records(tmp_path / "d.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        load_examples(tmp_path / "empty.jsonl")


def test_gold_answer():
    assert gold_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert gold_answer(27.0) == "27.0"


def test_sampler_shards_are_disjoint_and_cover_each_pass():
    ranks = [PromptSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    first_pass = [[s.next() for _ in range(5)] for s in ranks]
    assert set(first_pass[0]).isdisjoint(first_pass[1])
    assert sorted(first_pass[0] + first_pass[1]) == list(range(10))
    second = ranks[0].next()
    assert ranks[0].state_dict() == {"epoch": 1, "position": 1}
    assert second in range(10)


def test_sampler_resumes_exactly():
    sampler = PromptSampler(7, seed=0)
    for _ in range(9):
        sampler.next()
    resumed = PromptSampler(7, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    assert [resumed.next() for _ in range(10)] == [sampler.next() for _ in range(10)]


def test_sampler_needs_an_example_per_rank():
    with pytest.raises(ValueError, match="cannot be shared"):
        PromptSampler(1, seed=0, rank=0, world_size=2)


def test_encode_prompt_with_and_without_chat_template(tiny_model_dir):
    from era_llm.policy import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = encode_prompt(tokenizer, "1+2", "{prompt}=", chat_template=True)  # no template defined
    assert tokenizer.decode(plain) == "1+2="
    tokenizer.chat_template = "{% for m in messages %}={{ m['content'] }}{% endfor %}{% if add_generation_prompt %}+{% endif %}"
    chat = encode_prompt(tokenizer, "1+2", "{prompt}=", chat_template=True)
    assert tokenizer.decode(chat) == "=1+2=+"
    assert encode_prompt(tokenizer, "1+2", "{prompt}=", chat_template=False) == plain
