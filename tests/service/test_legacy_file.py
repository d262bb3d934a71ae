"""Reading a legacy export (`flowstate.service.legacy.read_legacy_file`): formats and refusals.

Every refusal is compared whole (code, message, field), so an operator running
``flowstate import-legacy`` is told which file and what is wrong. Found missing by
``make mutate`` (docs/testing.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowstate.core.errors import FlowStateError
from flowstate.core.model import ErrorCode
from flowstate.service.legacy import read_legacy_file


def _refusal(path: Path, file_format: str | None = None) -> tuple[ErrorCode, str, object]:
    with pytest.raises(FlowStateError) as refused:
        read_legacy_file(path, file_format)
    return refused.value.code, refused.value.message, refused.value.details


def test_the_format_comes_from_the_option_or_the_extension_in_any_case(tmp_path: Path) -> None:
    text = tmp_path / "rows.txt"
    text.write_text('[{"id": "legacy-1"}]', encoding="utf-8")
    assert read_legacy_file(text, "JSON") == [{"id": "legacy-1"}]
    upper = tmp_path / "ROWS.CSV"
    upper.write_text("id\nlegacy-2\n", encoding="utf-8")
    assert read_legacy_file(upper) == [{"id": "legacy-2"}]
    assert _refusal(text) == (
        ErrorCode.MALFORMED_REQUEST,
        f"cannot tell the format of {text}: use .csv or .json, or --format",
        {"field": "file"},
    )
    dotless = tmp_path / "csv"
    dotless.write_text("id\nlegacy-3\n", encoding="utf-8")
    assert (
        _refusal(dotless)[1]
        == f"cannot tell the format of {dotless}: use .csv or .json, or --format"
    )


def test_a_csv_field_keeps_its_own_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b'id,note\r\nlegacy-1,"two\r\nlines"\r\n')
    assert read_legacy_file(path) == [{"id": "legacy-1", "note": "two\r\nlines"}]


def test_text_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_bytes(json.dumps([{"id": "légacy-1"}], ensure_ascii=False).encode("utf-8"))
    assert read_legacy_file(path) == [{"id": "légacy-1"}]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id\nl\xe9gacy\n".encode("latin-1"))
    code, message, details = _refusal(latin)
    assert code is ErrorCode.MALFORMED_REQUEST
    assert message.startswith(f"cannot read {latin}: 'utf-8' codec can't decode byte 0xe9")
    assert details == {"field": "file"}
    missing = tmp_path / "missing.csv"
    assert _refusal(missing)[1].startswith(f"cannot read {missing}: [Errno 2]")


def test_json_must_be_an_array_of_objects_or_hold_one_under_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": [{"id": "a"}, {"id": "b"}]}), encoding="utf-8")
    assert read_legacy_file(path) == [{"id": "a"}, {"id": "b"}]
    path.write_text("{not json", encoding="utf-8")
    assert _refusal(path) == (
        ErrorCode.MALFORMED_REQUEST,
        f"{path} is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        {"field": "file"},
    )
    for body in ({"rows": "a"}, [{"id": "a"}, "b"], "rows"):
        path.write_text(json.dumps(body), encoding="utf-8")
        assert _refusal(path) == (
            ErrorCode.MALFORMED_REQUEST,
            f"{path} must hold a JSON array of objects",
            {"field": "file"},
        )
