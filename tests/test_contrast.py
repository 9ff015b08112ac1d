"""The WCAG contrast computation the browser test relies on, against known pairs."""

from __future__ import annotations

import pytest

from tests.contrast import (
    contrast_ratio,
    effective_background,
    parse_css_color,
    relative_luminance,
    required_ratio,
    text_color,
)

WHITE = (255.0, 255.0, 255.0)
BLACK = (0.0, 0.0, 0.0)


def test_black_on_white_is_21_to_1_and_the_order_does_not_matter() -> None:
    assert relative_luminance(BLACK) == 0
    assert relative_luminance(WHITE) == pytest.approx(1)
    assert contrast_ratio(BLACK, WHITE) == pytest.approx(21)
    assert contrast_ratio(WHITE, BLACK) == pytest.approx(21)
    assert contrast_ratio(WHITE, WHITE) == pytest.approx(1)


@pytest.mark.parametrize(
    ("fg", "bg", "ratio"),
    [
        ((0x77, 0x77, 0x77), WHITE, 4.48),  # the classic just-fails grey
        ((0x76, 0x76, 0x76), WHITE, 4.54),  # one step darker passes
        ((0x59, 0x59, 0x59), WHITE, 7.0),  # the usual 7:1 (AAA) grey
        ((255.0, 0.0, 0.0), WHITE, 4.0),
    ],
)
def test_known_pairs(
    fg: tuple[float, float, float], bg: tuple[float, float, float], ratio: float
) -> None:
    assert contrast_ratio(fg, bg) == pytest.approx(ratio, abs=0.01)


def test_css_colours_parse_in_chromiums_computed_forms() -> None:
    assert parse_css_color("rgb(18, 20, 23)") == (18, 20, 23, 1)
    assert parse_css_color("rgba(0, 0, 0, 0.14)") == (0, 0, 0, 0.14)
    assert parse_css_color("rgb(1 2 3 / 50%)") == (1, 2, 3, 0.5)
    assert parse_css_color("transparent")[3] == 0
    with pytest.raises(ValueError, match="oklch"):
        parse_css_color("oklch(0.5 0.1 20)")


def test_translucent_layers_are_composited_over_the_first_opaque_one() -> None:
    half_black = (0.0, 0.0, 0.0, 0.5)
    clear = (9.0, 9.0, 9.0, 0.0)
    assert effective_background([clear, half_black, (*WHITE, 1.0)], BLACK) == pytest.approx(
        (127.5, 127.5, 127.5)
    )
    # Nothing opaque: the page's canvas shows through.
    assert effective_background([clear], WHITE) == WHITE
    assert text_color((0.0, 0.0, 0.0, 0.5), WHITE) == pytest.approx((127.5, 127.5, 127.5))


@pytest.mark.parametrize(
    ("size", "weight", "need"),
    [(15, 400, 4.5), (24, 400, 3.0), (18.66, 700, 3.0), (18.66, 600, 4.5), (18, 700, 4.5)],
)
def test_large_text_needs_3_to_1(size: float, weight: int, need: float) -> None:
    assert required_ratio(size, weight) == need
