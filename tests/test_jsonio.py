"""util.jsonio: the one JSON reader; JSON nested past the parser's recursion is a ValueError."""

from __future__ import annotations

import json

import pytest

from userlm_local.util import jsonio
from userlm_local.util.errors import UserError

DEEP = "[" * 100_000 + "]" * 100_000
VALUE = {"a": [1, 2.5, None, True], "b": {"c": "é\u2603"}}


@pytest.mark.parametrize("data", [DEEP, DEEP.encode(), bytearray(DEEP.encode())])
def test_deep_nesting_is_one_value_error(data):
    with pytest.raises(jsonio.TooDeep) as info:
        jsonio.loads(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.msg == "nested too deeply"
    with pytest.raises(ValueError, match="^the answer is JSON nested too deeply$"):
        jsonio.loads(data, what="the answer")


@pytest.mark.parametrize("encode", [str, lambda s: s.encode("utf-8")])
def test_round_trip(encode):
    assert jsonio.loads(encode(json.dumps(VALUE, ensure_ascii=False))) == VALUE


def test_not_json_is_the_json_error():
    with pytest.raises(json.JSONDecodeError):
        jsonio.loads("{")


def test_load_file(tmp_path):
    good, deep, big = (
        tmp_path / name for name in ("good.json", "deep.json", "big.json")
    )
    good.write_text(json.dumps(VALUE), encoding="utf-8")
    deep.write_text(DEEP)
    big.write_text(json.dumps("x" * 2**20))
    assert jsonio.load_file(good, 2**20, "a test file") == VALUE
    with pytest.raises(jsonio.TooDeep):
        jsonio.load_file(deep, 2**20, "a test file")
    with pytest.raises(UserError, match=r"big\.json: larger than 1 MiB; not a test$"):
        jsonio.load_file(big, 2**20, "a test")
    with pytest.raises(OSError):
        jsonio.load_file(tmp_path / "missing.json", 2**20, "a test file")
