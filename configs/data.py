"""Reading data files: the one reader for prompt datasets, rollouts and CLI inputs.

JSONL (one JSON object a line) is read here line by line, so a bad line is an error that names the file
and the line. Other formats go through `datasets`: .parquet/.csv/.json/.arrow files, a folder written by
`Dataset.save_to_disk`, or a folder of .parquet files (a hub dataset's layout); their rows are named
`file: row N`. A run's prompts (`load_prompts`) are read and checked in full before any cluster or engine
starts. Lives in configs/ because it imports nothing heavy (`datasets` only for those formats) and every
package above reads data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file the user gave cannot be read; the message names the file and, when it can, the line."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line; DataError naming file:line on any bad line.

    required: fields each row must have."""
    rows = []
    for where, number, row in _jsonl_records(path):
        if isinstance(row, DataError):
            raise row
        problem = _row_problem(row, required)
        if problem:
            raise DataError(f"{where}: {problem}")
        rows.append((number, row))
    return rows


def _jsonl_records(path: str | Path) -> Iterator[tuple[str, int, dict[str, Any] | DataError]]:
    """(file:line, line, row or the DataError that line is) for every non-blank line."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, number, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, number, DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})")


def _row_problem(row: Any, required: tuple[str, ...]) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [k for k in required if k not in row]
    if missing:
        return f"missing field {', '.join(map(repr, missing))}"
    return None


DATASETS_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}


def _datasets_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a file or folder that `datasets` reads (see the module docstring)."""
    import datasets

    datasets.disable_progress_bars()
    folder = Path(path).expanduser()
    try:
        if folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(folder))
            if isinstance(ds, datasets.DatasetDict):
                if len(ds) != 1:
                    raise DataError(f"{path}: a dataset with splits {', '.join(ds)}: name one of them, "
                                    f"e.g. {folder / next(iter(ds))}")
                ds = next(iter(ds.values()))
            return list(ds)
        if folder.is_dir():
            files = sorted(str(p) for p in folder.rglob("*.parquet"))
            if not files:
                raise DataError(f"{path}: a folder, but neither a `datasets` save_to_disk folder nor .parquet files")
            kind, data_files = "parquet", files
        else:
            kind, data_files = DATASETS_FORMATS[folder.suffix.lower()], str(folder)
        return list(datasets.load_dataset(kind, data_files=data_files, split="train"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file; say which
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _records(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    """(where, row or the DataError it is) for every row of any supported format."""
    p = Path(path).expanduser()
    if not p.is_dir() and p.suffix.lower() not in DATASETS_FORMATS:
        for where, _, row in _jsonl_records(path):
            yield where, row
        return
    for i, row in enumerate(_datasets_rows(path), start=1):
        yield f"{path}: row {i}", row


def load_rows(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A dataset's rows, any supported format; DataError naming file:line (or row) on the first bad one."""
    rows = []
    for where, row in _records(path):
        if isinstance(row, DataError):
            raise row
        problem = _row_problem(row, required)
        if problem:
            raise DataError(f"{where}: {problem}")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class PromptRows:
    """A run's prompt rows, every one checked; `skipped` holds "file:line: why" for each bad line left out."""

    rows: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)


def _prompt_problem(row: Any, prompt_key: str, label_key: str) -> str | None:
    problem = _row_problem(row, (prompt_key, label_key))
    if problem:
        return problem
    prompt = row[prompt_key]
    if isinstance(prompt, str):
        return None if prompt.strip() else f"field {prompt_key!r} is empty"
    chat = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in prompt
    )
    if not chat:
        return f"field {prompt_key!r} must be a string or a list of chat messages ({{\"role\": ..., \"content\": ...}})"
    return None


def load_prompts(path: str | Path, prompt_key: str, label_key: str, on_bad_line: str = "error") -> PromptRows:
    """Every row of a prompt dataset, checked for `prompt_key` (a string or chat messages) and `label_key`.

    on_bad_line: "error" raises DataError at the first bad line, naming file:line and the field; "skip" leaves
    bad lines out and lists them. Row i of the result is row i for every reader with the same arguments (the
    workers index prompts by it)."""
    rows, skipped = [], []
    for where, row in _records(path):
        problem = str(row).removeprefix(f"{where}: ") if isinstance(row, DataError) else _prompt_problem(
            row, prompt_key, label_key
        )
        if problem is None:
            rows.append(row)
        elif on_bad_line == "skip":
            skipped.append(f"{where}: {problem}")
        else:
            raise DataError(f"{where}: {problem}")
    if not rows:
        raise DataError(f"{path}: no usable rows" + (f" ({len(skipped)} bad lines skipped)" if skipped else ""))
    return PromptRows(rows, skipped)
