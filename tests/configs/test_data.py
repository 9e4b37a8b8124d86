"""The one data reader: every format a user's prompts come in, and every bad line named by file:line."""

import json

import pytest

from temper.configs.data import DataError, load_prompts, load_rows

ROWS = [{"prompt": f"What is {i} + 1?", "label": f"x = {i + 1}"} for i in range(5)]  # CSV keeps text labels text


def write_jsonl(path, rows, raw: dict[int, str] | None = None):
    lines = [json.dumps(r) for r in rows]
    for number, text in (raw or {}).items():
        lines.insert(number - 1, text)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"prompt": "x", "label": ', "not valid JSON"),
        ('["prompt", "label"]', "expected a JSON object, got list"),
        ('{"prompt": "What is 1 + 1?"}', "missing field 'label'"),
        ('{"label": "2"}', "missing field 'prompt'"),
        ('{"prompt": "  ", "label": "2"}', "field 'prompt' is empty"),
        ('{"prompt": 7, "label": "2"}', "field 'prompt' must be a string or a list of chat messages"),
        ('{"prompt": [{"text": "hi"}], "label": "2"}', "field 'prompt' must be a string or a list of chat messages"),
    ],
)
def test_each_bad_line_is_named_with_its_file_line_and_field(tmp_path, raw, problem):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, {3: raw})
    with pytest.raises(DataError, match=rf"^{path}:3: {problem}"):
        load_prompts(path, "prompt", "label")


def test_skip_leaves_bad_lines_out_and_lists_them(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS, {2: "oops", 5: '{"prompt": "p"}'})
    read = load_prompts(path, "prompt", "label", on_bad_line="skip")
    assert read.rows == ROWS
    assert [s.split(": ", 1)[0] for s in read.skipped] == [f"{path}:2", f"{path}:5"]
    assert "missing field 'label'" in read.skipped[1]


def test_a_file_with_no_usable_row_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [], {1: "{}"})
    with pytest.raises(DataError, match=r"no usable rows \(1 bad lines skipped\)"):
        load_prompts(path, "prompt", "label", on_bad_line="skip")


def test_chat_message_prompts_and_other_keys(tmp_path):
    rows = [{"q": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2"}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    assert load_prompts(path, "q", "answer").rows == rows


def test_parquet_csv_and_datasets_folders_read_like_jsonl(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.to_csv(str(tmp_path / "train.csv"), index=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    for where in ("train.parquet", "train.csv", "saved", "saved_dict", "hub"):
        assert load_prompts(tmp_path / where, "prompt", "label").rows == ROWS, where


def test_a_datasets_row_is_named_by_number_and_splits_must_be_chosen(tmp_path):
    import datasets

    datasets.Dataset.from_list([*ROWS[:2], {"prompt": "p", "label": None}, *ROWS[2:]]).to_parquet(str(tmp_path / "t.parquet"))
    assert len(load_prompts(tmp_path / "t.parquet", "prompt", "label").rows) == 6  # label None is present
    datasets.Dataset.from_list([{"prompt": "p"}]).to_parquet(str(tmp_path / "nolabel.parquet"))
    with pytest.raises(DataError, match=r"nolabel.parquet: row 1: missing field 'label'"):
        load_prompts(tmp_path / "nolabel.parquet", "prompt", "label")
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DataError, match=r"splits train, test: name one of them, e.g. .*two/train"):
        load_prompts(tmp_path / "two", "prompt", "label")
    assert load_prompts(tmp_path / "two" / "test", "prompt", "label").rows == ROWS


def test_load_rows_keeps_its_plain_contract(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"response": "x"}])
    assert load_rows(path) == [{"response": "x"}]
    with pytest.raises(DataError, match=r"rows.jsonl:1: missing field 'label'"):
        load_rows(path, required=("label",))
