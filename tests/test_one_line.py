"""The one line of an exception that tempa's errors quote (chat_templates/one_line.py)."""

from __future__ import annotations

from tempa.chat_templates.one_line import first_line, typed_line


def test_an_error_quotes_the_first_line_of_a_message_or_the_type_when_it_has_none():
    many = ValueError("\n  Expecting value: line 1 column 1\nDuring handling of the above...\n")
    assert first_line(many) == "Expecting value: line 1 column 1"
    assert typed_line(many) == "ValueError: Expecting value: line 1 column 1"
    assert first_line(KeyError()) == typed_line(KeyError()) == "KeyError"  # never "KeyError: "
    assert first_line(OSError("  \n ")) == "OSError"
