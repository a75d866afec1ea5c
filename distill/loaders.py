"""Load text records from user files (.txt, .jsonl, .csv) with errors that point at the bad line.

Every problem with the file itself raises :class:`DataFileError`, whose message is one line,
``"<path>:<line>: <message>"`` (line 0 when the problem is not tied to a line: a missing file, an empty
result), so command-line users can jump straight to it. Bad arguments raise plain ``ValueError``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

__all__ = ["FORMAT_SUFFIXES", "DataFileError", "load_text_records"]

FileFormat = Literal["auto", "txt", "jsonl", "csv"]

#: File name suffixes recognised by ``fmt="auto"``.
FORMAT_SUFFIXES: dict[str, str] = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}

_DEFAULT_FIELD = "text"


class DataFileError(ValueError):
    """A problem in a data file, located by path and 1-based line number (0: the file as a whole).

    Attributes
    ----------
    path : str
        The file.
    line : int
        1-based line number, or 0.
    message : str
        What is wrong (one line).
    """

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = " ".join(message.split())  # keep str(err) to one line
        super().__init__(f"{self.path}:{self.line}: {self.message}")

    def __reduce__(self) -> tuple[type[DataFileError], tuple[str, int, str]]:
        return (type(self), (self.path, self.line, self.message))


def _read_text(path: Path) -> str:
    """Read ``path`` as UTF-8 (an initial BOM is dropped), locating decoding errors by line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(path, 0, "file not found") from None
    except IsADirectoryError:
        raise DataFileError(path, 0, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataFileError(path, 0, f"cannot read file: {exc.strerror or exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start:exc.end].hex()
        raise DataFileError(
            path, line, f"not valid UTF-8 (byte 0x{bad} at byte offset {exc.start}); re-encode the file as UTF-8"
        ) from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` splitting on '\\n' only (str.splitlines also splits on other
    characters, which would shift line numbers), with a trailing '\\r' removed."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _txt_records(path: Path, text: str, txt_mode: str) -> Iterator[tuple[int, str]]:
    if txt_mode == "lines":
        for number, line in _lines(text):
            yield number, line
        return
    paragraph: list[str] = []
    start = 0
    for number, line in _lines(text):
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line.rstrip())
        elif paragraph:
            yield start, "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield start, "\n".join(paragraph)


def _jsonl_records(path: Path, text: str, field: str) -> Iterator[tuple[int, str]]:
    for number, line in _lines(text):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFileError(path, number, f"expected a JSON object, got {type(obj).__name__}")
        if field not in obj:
            keys = ", ".join(repr(k) for k in sorted(obj)) or "none"
            raise DataFileError(path, number, f"missing field {field!r} (fields present: {keys})")
        value = obj[field]
        if not isinstance(value, str):
            raise DataFileError(
                path, number, f"field {field!r} must be a string, got {type(value).__name__}"
            )
        yield number, value


def _csv_records(path: Path, text: str, field: str) -> Iterator[tuple[int, str]]:
    # newline="" keeps the raw line endings so the csv module can parse quoted multi-line fields.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataFileError(path, 1, "empty CSV file, expected a header row")
        if field not in header:
            present = ", ".join(repr(name) for name in header)
            raise DataFileError(path, 1, f"missing column {field!r} (columns present: {present})")
        column = header.index(field)
        next_line = reader.line_num + 1
        for row in reader:
            start, next_line = next_line, reader.line_num + 1
            if not row:
                continue
            if column >= len(row):
                raise DataFileError(
                    path, start, f"row has {len(row)} fields, column {field!r} is field {column + 1}"
                )
            yield start, row[column]
    except csv.Error as exc:
        raise DataFileError(path, reader.line_num, f"malformed CSV: {exc}") from None


def load_text_records(
    path: str | Path,
    *,
    field: str | None = None,
    fmt: FileFormat = "auto",
    txt_mode: Literal["lines", "paragraphs"] = "lines",
    min_chars: int = 1,
    max_records: int | None = None,
) -> list[str]:
    """Load text records from a .txt, .jsonl or .csv file.

    Parameters
    ----------
    path : str or Path
        The file (UTF-8; an initial byte-order mark is ignored).
    field : str, optional
        JSON key (jsonl) or column name (csv) holding the text; default ``"text"``. Ignored for txt
        (callers pass their configured field whatever the file format).
    fmt : {"auto", "txt", "jsonl", "csv"}
        File format; ``"auto"`` picks it from the suffix (.txt/.text, .jsonl/.ndjson, .csv).
    txt_mode : {"lines", "paragraphs"}
        For txt: one record per non-empty line, or one per block of lines separated by blank lines
        (the lines of a block are joined with '\\n').
    min_chars : int
        Records shorter than this (after stripping surrounding whitespace) are skipped.
    max_records : int, optional
        Stop after this many records.

    Returns
    -------
    list of str
        The records, stripped of surrounding whitespace, in file order.

    Raises
    ------
    DataFileError
        Missing/unreadable file, bytes that are not UTF-8, invalid JSON, a JSON line that is not an
        object, a missing or non-string field, a missing CSV column, or no records at all.
    ValueError
        Invalid arguments.
    """
    path = Path(path)
    if fmt == "auto":
        suffix = path.suffix.lower()
        if suffix not in FORMAT_SUFFIXES:
            allowed = ", ".join(FORMAT_SUFFIXES)
            raise DataFileError(
                path, 0, f"cannot infer the format from suffix {suffix!r}; use one of {allowed} or pass fmt"
            )
        resolved = FORMAT_SUFFIXES[suffix]
    elif fmt in ("txt", "jsonl", "csv"):
        resolved = fmt
    else:
        raise ValueError(f"fmt must be 'auto', 'txt', 'jsonl' or 'csv', got {fmt!r}")
    if txt_mode not in ("lines", "paragraphs"):
        raise ValueError(f"txt_mode must be 'lines' or 'paragraphs', got {txt_mode!r}")
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be >= 1 or None, got {max_records}")

    text = _read_text(path)
    key = _DEFAULT_FIELD if field is None else field
    if resolved == "txt":
        source = _txt_records(path, text, txt_mode)
    elif resolved == "jsonl":
        source = _jsonl_records(path, text, key)
    else:
        source = _csv_records(path, text, key)

    records: list[str] = []
    for _, value in source:
        value = value.strip()
        if not value or len(value) < min_chars:
            continue
        records.append(value)
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        raise DataFileError(path, 0, f"no records found (format {resolved}, min_chars={min_chars})")
    return records
