"""The nesting pre-check: json_depth equals the real depth of any JSON document (brackets and escaped
quotes inside strings included), and refuses deep bodies before the parser recurses."""

import json
import random

import pytest

from longer_train.serve.requests import MAX_DEPTH, RequestError, json_depth, parse_json


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_json_depth_is_exact_on_random_documents():
    rng = random.Random(0)
    strings = ["a[b", 'x\\"[[{', "\\\\", '"]]', "{{\\\\\\\"[", "\u00e9}", ""]

    def value(depth: int):
        r = rng.random()
        if depth > 6 or r < 0.3:
            return rng.choice([1, 2.5, None, True, *strings])
        if r < 0.65:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(strings) + str(i): value(depth + 1) for i in range(rng.randrange(4))}

    for _ in range(2000):
        doc = value(0)
        for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False, indent=1)):
            assert json_depth(text.encode()) == _depth(doc), text


def test_deep_bodies_are_refused_before_parsing():
    for body in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        with pytest.raises(RequestError, match=f"at most {MAX_DEPTH}") as err:
            parse_json(body, 1 << 20)
        assert err.value.status == 400
    assert parse_json(b'{"a": [[1], "[[[[[[[[[[[[["]}', 1 << 20) == {"a": [[1], "[" * 13]}


@pytest.mark.parametrize("item", [b"0", b"{}", b"[[]]", b'{"":{}}', b'"ab"', b"1.5"])
def test_a_parsed_body_holds_at_most_35_times_its_bytes(item):
    """The factor of the memory bound in docs/serving.md: CPython objects per byte of JSON, worst cases
    (`{"":{}},` -- 8 bytes -- parses to two dicts) included."""
    import tracemalloc

    body = b"[" + b",".join([item] * 20_000) + b"]"
    tracemalloc.start()
    try:
        parsed = parse_json(body, 1 << 24)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(parsed) == 20_000 and peak <= 35 * len(body), peak / len(body)
