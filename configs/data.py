"""Reading data files: the one reader for prompt datasets, rollouts and CLI inputs.

JSONL (one JSON object a line) is read here line by line, so a bad line is an error that names the file
and the line, raised before any cluster or engine starts. Other formats that `datasets` reads (.parquet,
.csv, .json arrays) go through `datasets`. Lives in configs/ because it imports nothing heavy and every
package above reads data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file the user gave cannot be read; the message names the file and, when it can, the line."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line; DataError naming file:line on any bad line.

    required: fields each row must have."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{number}: missing field {', '.join(map(repr, missing))}")
        rows.append((number, row))
    return rows


DATASETS_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}


def load_rows(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A dataset's rows: JSONL by `read_jsonl`; .parquet/.csv/.json/.arrow through `datasets`."""
    suffix = Path(path).suffix.lower()
    if suffix not in DATASETS_FORMATS:
        return [row for _, row in read_jsonl(path, required)]
    import datasets

    datasets.disable_progress_bars()
    try:
        rows = list(datasets.load_dataset(DATASETS_FORMATS[suffix], data_files=str(path), split="train"))
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file; say which
        raise DataError(f"{path}: cannot read as {DATASETS_FORMATS[suffix]} ({type(e).__name__}: {e})") from None
    for i, row in enumerate(rows):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}: row {i}: missing field {', '.join(map(repr, missing))}")
    return rows
