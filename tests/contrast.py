"""Text contrast per WCAG 2.x (pure: colours in, ratios out; no browser).

The browser test collects each visible text's computed colour and the backgrounds behind
it (as CSS ``rgb()``/``rgba()`` strings); this module composites them and says whether
the ratio is enough: 4.5:1 for normal text, 3:1 for large text (at least 24 px, or at
least 18.66 px (14 pt) and bold). Definitions: WCAG 2.2, "relative luminance" and
"contrast ratio" (https://www.w3.org/TR/WCAG22/#dfn-relative-luminance).
"""

from __future__ import annotations

import re

__all__ = [
    "RGB",
    "RGBA",
    "contrast_ratio",
    "effective_background",
    "parse_css_color",
    "relative_luminance",
    "required_ratio",
    "text_color",
]

RGB = tuple[float, float, float]
"""Red, green, blue in 0..255."""
RGBA = tuple[float, float, float, float]
"""The same with alpha in 0..1."""

_CSS = re.compile(r"^rgba?\(\s*([^)]*)\)$")


def parse_css_color(text: str) -> RGBA:
    """A computed CSS colour (``rgb(1, 2, 3)``, ``rgba(1, 2, 3, 0.5)``, ``rgb(1 2 3 / 0.5)``)
    as RGBA; ``transparent`` is ``(0, 0, 0, 0)``. Anything else (``color(...)``, ``oklch``)
    is a ValueError that names it: the stylesheet uses sRGB colours only."""
    text = text.strip()
    if text == "transparent":
        return (0.0, 0.0, 0.0, 0.0)
    found = _CSS.match(text)
    if found is None:
        raise ValueError(f"not an rgb()/rgba() colour: {text!r}")
    parts = [p for p in re.split(r"[\s,/]+", found.group(1)) if p]
    if len(parts) not in (3, 4):
        raise ValueError(f"not an rgb()/rgba() colour: {text!r}")
    r, g, b = (float(p) for p in parts[:3])
    alpha = 1.0
    if len(parts) == 4:
        alpha = float(parts[3][:-1]) / 100 if parts[3].endswith("%") else float(parts[3])
    return (r, g, b, alpha)


def _channel(c: float) -> float:
    s = c / 255
    return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: RGB) -> float:
    """WCAG relative luminance: 0 for black, 1 for white."""
    r, g, b = rgb
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_ratio(a: RGB, b: RGB) -> float:
    """(L1 + 0.05) / (L2 + 0.05), the lighter over the darker: 1 to 21."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def _over(top: RGBA, below: RGB) -> RGB:
    """``top`` painted (alpha-blended) over the opaque ``below``."""
    a = top[3]
    return (
        top[0] * a + below[0] * (1 - a),
        top[1] * a + below[1] * (1 - a),
        top[2] * a + below[2] * (1 - a),
    )


def effective_background(layers: list[RGBA], canvas: RGB) -> RGB:
    """The colour behind a text: ``layers`` from the element outwards (its own background
    first), composited from the first opaque one (or ``canvas``) inwards."""
    base = canvas
    inner: list[RGBA] = []
    for layer in layers:
        if layer[3] >= 1:
            base = (layer[0], layer[1], layer[2])
            break
        inner.append(layer)
    for layer in reversed(inner):
        base = _over(layer, base)
    return base


def text_color(color: RGBA, background: RGB) -> RGB:
    """A (possibly translucent) text colour as seen on ``background``."""
    return _over(color, background)


def required_ratio(font_size_px: float, font_weight: int) -> float:
    """4.5 for normal text, 3 for large: >= 24 px, or >= 18.66 px (14 pt) and bold (>= 700)."""
    large = font_size_px >= 24 or (font_size_px >= 18.66 and font_weight >= 700)
    return 3.0 if large else 4.5
