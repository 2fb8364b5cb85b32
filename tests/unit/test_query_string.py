"""Query strings read the way `urllib.parse.parse_qsl` reads them (the fast path for strings
with nothing to decode included)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderflow.api.errors import HTTPProblem
from orderflow.api.http import query_pairs


@given(st.text(alphabet="ab=&;%+ 2FZé\x00", max_size=24))
def test_a_query_string_reads_as_parse_qsl_reads_it(query: str) -> None:
    try:
        expected = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(HTTPProblem):
            query_pairs(query)
    else:
        assert [tuple(pair) for pair in query_pairs(query)] == expected
