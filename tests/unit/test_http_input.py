"""The shared HTTP parameter readers: strict, bounded, and never anything but a 4xx."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_core.http_input import BadParameter, parse_int, parse_name, parse_symbol_path, parse_symbols

KNOWN = ("R_50", "R_100", "1HZ100V")


@pytest.mark.parametrize("raw", ["²", "¹", "١٢", "１", "1e3", "1.0", " 1", "1 ", "+1", "-1", "0x10", "9" * 13, "\n1"])
def test_only_ascii_digits_within_the_bounds_are_whole_numbers(raw: str) -> None:
    with pytest.raises(BadParameter) as error:
        parse_int(raw, "since", default=0, low=0, high=999_999_999_999, code="invalid_since")
    assert error.value.status == 400 and error.value.code == "invalid_since"
    assert "since must be a whole number from 0 to 999999999999" in error.value.message


def test_absent_or_empty_is_the_default_and_bounds_are_inclusive() -> None:
    assert parse_int(None, "limit", default=7, low=1, high=10) == 7
    assert parse_int("", "limit", default=7, low=1, high=10) == 7
    assert parse_int("1", "limit", default=7, low=1, high=10) == 1
    assert parse_int("10", "limit", default=7, low=1, high=10) == 10
    assert parse_int("07", "limit", default=7, low=1, high=10) == 7
    for raw in ("11", "0", "007"):  # no more digits than the bound has: int() stays cheap
        with pytest.raises(BadParameter):
            parse_int(raw, "limit", default=7, low=1, high=10)


@given(st.text(max_size=30))
def test_any_text_is_a_number_in_range_or_a_bad_parameter(raw: str) -> None:
    try:
        value = parse_int(raw, "n", default=5, low=1, high=1000)
    except BadParameter as error:
        assert error.response().status_code == 400
        assert len(error.message) < 200  # the echo is cut
    else:
        assert 1 <= value <= 1000


@given(st.text(max_size=300))
def test_names_and_symbols_never_raise_anything_else(raw: str) -> None:
    for call in (
        lambda: parse_name(raw, "component", default=None),
        lambda: parse_symbols(raw, KNOWN),
        lambda: parse_symbol_path(raw, KNOWN),
    ):
        try:
            result = call()
        except BadParameter as error:
            assert "\n" not in error.message.replace("\\n", "")
        else:
            assert result is None or "\n" not in str(result)


def test_symbols_unknown_is_400_on_the_list_and_404_on_the_path() -> None:
    with pytest.raises(BadParameter) as listed:
        parse_symbols("R_50,NOPE", KNOWN)
    assert (listed.value.status, listed.value.code) == (400, "unknown_symbol")
    with pytest.raises(BadParameter) as path:
        parse_symbol_path("NOPE", KNOWN)
    assert (path.value.status, path.value.code) == (404, "unknown_symbol")
    with pytest.raises(BadParameter) as malformed:
        parse_symbols("R\n50", KNOWN)
    assert malformed.value.code == "invalid_symbols"
    with pytest.raises(BadParameter):
        parse_symbol_path("R_50\n", KNOWN)  # SYMBOL_PATTERN's $ alone would let it through
    assert parse_symbols(" R_50 ,R_100,R_50", KNOWN) == ("R_50", "R_100")
