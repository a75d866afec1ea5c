"""Tests for distill.loaders: txt/jsonl/csv record loading and line-located errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from distill.loaders import DataFileError, load_text_records


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def error_of(path: Path, **kwargs: object) -> DataFileError:
    with pytest.raises(DataFileError) as info:
        load_text_records(path, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert "\n" not in str(err)
    assert str(err) == f"{path}:{err.line}: {err.message}"
    return err


# ---------------------------------------------------------------- txt

def test_txt_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "first record\n\n  second record  \r\nthird\n   \n")
    assert load_text_records(path) == ["first record", "second record", "third"]
    assert load_text_records(path, max_records=2) == ["first record", "second record"]
    assert load_text_records(path, min_chars=6) == ["first record", "second record"]


def test_txt_paragraphs(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "para one\ncontinues here\n\n\npara two\n  \npara three\n")
    assert load_text_records(path, txt_mode="paragraphs") == [
        "para one\ncontinues here", "para two", "para three"
    ]


def test_txt_bom_and_unicode(tmp_path: Path) -> None:
    path = write(tmp_path / "u.txt", "\ufeffcafé naïve\nzweite Zeile \u2028 gleiche Zeile\n".encode("utf-8"))
    assert load_text_records(path) == ["café naïve", "zweite Zeile \u2028 gleiche Zeile"]


def test_bad_utf8_reports_line_3(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", b"line one\nline two\nline \xff three\nline four\n")
    err = error_of(path)
    assert err.line == 3
    assert "UTF-8" in err.message
    # the same location is reported whatever the format
    jpath = write(tmp_path / "bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xc3("}\n')
    assert error_of(jpath).line == 3


def test_missing_file_and_directory(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.txt")
    assert err.line == 0 and "not found" in err.message
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert "directory" in error_of(folder).message


def test_empty_result(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.txt", "\n  \n\n")
    err = error_of(path)
    assert err.line == 0 and "no records" in err.message
    short = write(tmp_path / "short.txt", "ab\ncd\n")
    assert "no records" in error_of(short, min_chars=5).message


# ---------------------------------------------------------------- jsonl

def test_jsonl(tmp_path: Path) -> None:
    lines = [{"text": "hello world", "id": 1}, {"text": "second", "body": "other"}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert load_text_records(path) == ["hello world", "second"]
    path2 = write(tmp_path / "d2.ndjson", '{"body": "x y"}\n{"body": "z"}\n')
    assert load_text_records(path2, field="body") == ["x y", "z"]


def test_jsonl_bad_json_on_line_2(tmp_path: Path) -> None:
    path = write(tmp_path / "b.jsonl", '{"text": "ok"}\n{"text": "unterminated}\n{"text": "ok"}\n')
    err = error_of(path)
    assert err.line == 2 and "invalid JSON" in err.message


@pytest.mark.parametrize(
    ("line2", "expected"),
    [
        ('["a list"]', "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        ('{"body": "no text key"}', "missing field 'text'"),
        ('{"text": 42}', "must be a string, got int"),
        ('{"text": null}', "must be a string, got NoneType"),
    ],
)
def test_jsonl_structure_errors(tmp_path: Path, line2: str, expected: str) -> None:
    path = write(tmp_path / "s.jsonl", '{"text": "fine"}\n' + line2 + "\n")
    err = error_of(path)
    assert err.line == 2
    assert expected in err.message


def test_jsonl_missing_field_names_present_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "k.jsonl", '{"body": "a", "title": "b"}\n')
    err = error_of(path, field="content")
    assert err.line == 1 and "'body'" in err.message and "'title'" in err.message


# ---------------------------------------------------------------- csv

def test_csv_with_quoted_multiline_field(tmp_path: Path) -> None:
    content = 'id,text\r\n1,"first, with comma"\r\n2,"multi\nline ""quoted"" record"\r\n3,last\r\n'
    path = write(tmp_path / "c.csv", content)
    assert load_text_records(path) == ["first, with comma", 'multi\nline "quoted" record', "last"]


def test_csv_other_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "note,label\nsome note,1\nanother,0\n")
    assert load_text_records(path, field="note") == ["some note", "another"]


def test_csv_missing_column_names_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "id,body,label\n1,abc,0\n")
    err = error_of(path)
    assert err.line == 1
    assert "missing column 'text'" in err.message
    assert "'id', 'body', 'label'" in err.message


def test_csv_short_row_reports_its_start_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", 'id,text\n1,"two\nlines"\n2\n')
    err = error_of(path)
    assert err.line == 4
    assert "1 fields" in err.message


def test_csv_empty_file(tmp_path: Path) -> None:
    assert error_of(write(tmp_path / "e.csv", "")).line == 1
    assert "no records" in error_of(write(tmp_path / "h.csv", "text\n")).message


# ---------------------------------------------------------------- arguments and the error type

def test_format_selection_and_argument_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "data.log", '{"text": "as jsonl"}\n')
    assert "suffix" in error_of(path).message
    assert load_text_records(path, fmt="jsonl") == ["as jsonl"]
    assert load_text_records(path, fmt="txt") == ['{"text": "as jsonl"}']
    with pytest.raises(ValueError, match="fmt"):
        load_text_records(path, fmt="xml")  # type: ignore[arg-type]
    assert load_text_records(path, fmt="txt", field="body") == ['{"text": "as jsonl"}']  # field ignored
    with pytest.raises(ValueError, match="txt_mode"):
        load_text_records(path, fmt="txt", txt_mode="words")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_records"):
        load_text_records(path, fmt="txt", max_records=0)


def test_error_is_value_error_and_picklable() -> None:
    err = DataFileError("x.csv", 7, "bad\nthing")
    assert isinstance(err, ValueError)
    assert str(err) == "x.csv:7: bad thing"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.message) == ("x.csv", 7, "bad thing")
