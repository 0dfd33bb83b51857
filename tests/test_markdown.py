from __future__ import annotations

import pytest

from granite_magic._markdown import extract_code, parse_json_reply, safe_markdown


@pytest.mark.parametrize(
    "unsafe",
    [
        "<img src=x onerror=alert(1)>",
        "Hello <script>alert('x')</script> world",
        "<iframe src='javascript:alert(1)'></iframe>",
        "two\n\n<div onclick=evil()>block</div>\n",
    ],
)
def test_raw_html_is_escaped(unsafe: str) -> None:
    assert "<" not in safe_markdown(unsafe)
    assert "&lt;" in safe_markdown(unsafe)


def test_script_links_are_defused() -> None:
    out = safe_markdown("[click](javascript:alert(1)) and [ok](https://example.com)")
    assert "javascript:" not in out.replace("#blocked-javascript:", "")
    assert "(https://example.com)" in out


def test_code_is_left_verbatim() -> None:
    text = "Use `a < b` here.\n\n```python\nif a < b:\n    print('<b>')\n```\n\nand <b>this</b>"
    out = safe_markdown(text)
    assert "`a < b`" in out
    assert "if a < b:\n    print('<b>')" in out
    assert out.endswith("and &lt;b>this&lt;/b>")


def test_unclosed_fence_stays_code() -> None:
    assert safe_markdown("```\n<b>x") == "```\n<b>x"


def test_plain_markdown_is_unchanged() -> None:
    text = "# Title\n\n* one\n* two\n\n**bold** and _it_ {x for x in y}"
    assert safe_markdown(text) == text


def test_extract_code_strips_fences() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == ("def f():\n    return 1", "python")
    assert extract_code("x = 1\n") == ("x = 1", "")


def test_parse_json_reply() -> None:
    assert parse_json_reply('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        parse_json_reply("{not json")
