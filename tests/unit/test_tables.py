"""The one table formatter of pydpctl (control/tables.py)."""

from __future__ import annotations

import pytest

from control.tables import format_fields, format_table


def test_columns_are_aligned_two_spaces_apart_without_trailing_spaces():
    text = format_table(["Name", "IP", "Weight"], [["e1", "198.51.100.21", 1], ["edge-two", "192.0.2.5", 100]],
                        right={2})
    assert text.split("\n") == [
        "Name      IP             Weight",
        "e1        198.51.100.21       1",
        "edge-two  192.0.2.5         100",
    ]


def test_none_is_a_dash_and_the_last_column_is_not_padded():
    text = format_table(["A", "LONG HEADER"], [[None, "x"], ["value", None]])
    assert text.split("\n") == ["A      LONG HEADER", "-      x", "value  -"]


def test_no_rows_is_the_header_alone():
    assert format_table(["CLUSTER", "EDGE"], []) == "CLUSTER  EDGE"


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="2 values under 3 headers"):
        format_table(["A", "B", "C"], [["1", "2"]])


def test_fields():
    assert format_fields([("Cluster", "web"), ("Cluster IP", "198.51.100.10"), ("MAC", None)]).split("\n") == [
        "Cluster:    web", "Cluster IP: 198.51.100.10", "MAC:        -"]
    assert format_fields([]) == ""
