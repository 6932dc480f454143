"""List files (positives lists, URL lists): text lines or one CSV column, with their line numbers."""

from __future__ import annotations

from negset.core.listfile import read_list_entries

COLUMNS = ("url", "uri")


def test_text_lists_skip_blank_lines_and_comments_and_keep_line_numbers(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# header comment\nhttp://a/1.jpg\n\n  http://a/2.jpg  \n#http://a/3.jpg\n")
    assert read_list_entries(path, COLUMNS) == [(2, "http://a/1.jpg"), (4, "http://a/2.jpg")]


def test_a_csv_column_is_found_by_its_header_whatever_its_place(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("id, URI ,note\n1,http://a/1.jpg,x\n2,,empty cell\n3\n4,http://a/4.jpg,\n")
    assert read_list_entries(path, COLUMNS) == [(2, "http://a/1.jpg"), (5, "http://a/4.jpg")]


def test_a_csv_without_a_known_header_is_read_from_its_first_column(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("http://a/1.jpg,first\nhttp://a/2.jpg,second\n")
    assert read_list_entries(path, COLUMNS) == [(1, "http://a/1.jpg"), (2, "http://a/2.jpg")]
    (tmp_path / "empty.csv").write_text("")
    assert read_list_entries(tmp_path / "empty.csv", COLUMNS) == []
