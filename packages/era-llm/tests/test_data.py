import json

import pytest

from era_llm.data import PromptSampler, encode_prompt, gold_answer, load_examples, read_records
from era_llm.errors import UsageError
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
    # datasets reads a missing field as null.
    with pytest.raises(ValueError, match=r"record 1 .*: the answer must be text or a number"):
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
    with pytest.raises(UsageError, match="no such file"):
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


def _dapo_rows():
    """Two rows shaped like DAPO-Math-17k's parquet (chat prompt, nested ground truth)."""
    instruction = (
        "Solve the following math problem step by step. The last line of your response "
        "should be of the form Answer: $Answer (without quotes) where $Answer is the answer "
        'to the problem.\n\n{q}\n\nRemember to put your answer on its own line after "Answer:".'
    )
    rows = []
    for index, (question, answer) in enumerate([("What is 3+4?", "7"), ("What is 5*7?", "35")]):
        rows.append(
            {
                "data_source": "math_dapo",
                "prompt": [{"content": instruction.format(q=question), "role": "user"}],
                "ability": "MATH",
                "reward_model": {"ground_truth": answer, "style": "rule-lm"},
                "extra_info": {"index": f"id-{index}"},
            }
        )
    rows[1]["prompt"].insert(0, {"content": "You are a careful solver.", "role": "system"})
    return rows


CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_dapo_math_shaped_parquet(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from era_llm.policy import load_tokenizer

    path = tmp_path / "dapo-math-17k.parquet"
    pq.write_table(pa.Table.from_pylist(_dapo_rows()), path)
    examples = load_examples(path, answer_field="reward_model.ground_truth")
    assert [e.answer for e in examples] == ["7", "35"]
    assert examples[1].prompt[0] == {"role": "system", "content": "You are a careful solver."}
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(UsageError, match="chat messages, which need the tokenizer's chat template"):
        encode_prompt(tokenizer, examples[1].prompt, "{prompt}", chat_template=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    expected = "[system]You are a careful solver.[user]" + examples[1].prompt[1]["content"]
    ids = encode_prompt(tokenizer, examples[1].prompt, "ignored {prompt}", chat_template=True)
    assert ids == tokenizer(expected + "[assistant]", add_special_tokens=False).input_ids
    # DAPO's prompts ask for an Answer: line; that is what the answer-line format grades.
    response = "3 + 4 = 7, so the sum is seven.\nAnswer: 7"
    assert math_verify_reward(response, examples[0].answer, answer_format="answer-line") == 1.0
    assert math_verify_reward(response, examples[0].answer) == 0.0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": None, "answer": "1"}], r"record 0 of .*: the prompt must be .* NoneType"),
        ([{"question": 5, "answer": "1"}], r"record 0 of .*: the prompt must be .* int"),
        ([{"question": "a", "answer": [1, 2]}], r"record 0 of .*: the answer must be .* list"),
        ([{"question": "a", "answer": None}], r"record 0 of .*: the answer must be .* NoneType"),
        ([{"question": "a", "answer": ""}, {"question": "b", "answer": " "}], "every answer in"),
    ],
)
def test_bad_data_is_refused(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UsageError, match=message):
        load_examples(path)


def test_a_malformed_line_is_named_with_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": "2"\n')
    with pytest.raises(UsageError, match=r"broken\.jsonl:3: malformed JSON line"):
        load_examples(path)
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "a",\n "answer": 1},\n {"question" "b"}]')
    with pytest.raises(UsageError, match=r"broken\.json:3: malformed JSON"):
        load_examples(path)
    (tmp_path / "object.json").write_text('{"question": "a", "answer": "1"}')
    with pytest.raises(UsageError, match="must hold a JSON list of objects"):
        load_examples(tmp_path / "object.json")


def test_a_corrupt_parquet_file_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(UsageError, match=r"data: cannot read .*broken\.parquet \("):
        load_examples(path)
