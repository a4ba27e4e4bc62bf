"""A small line chart drawn with PIL (no plotting dependency for one figure)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from fit3d_hub.atomic import save_image_atomic

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def line_chart(path: str | Path, xs: list[float], series: dict[str, list[float]], *,
               x_label: str, y_label: str, title: str, size: tuple[int, int] = (520, 360)
               ) -> Path:
    """Write a PNG with one line per series, axes from the data's range, and a legend."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    values = [v for ys in series.values() for v in ys]
    y0, y1 = min(0.0, min(values)), max(values) or 1.0
    x0, x1 = min(xs), max(xs)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / ((x1 - x0) or 1) * (w - left - right),
                h - bottom - (y - y0) / ((y1 - y0) or 1) * (h - top - bottom))

    d.line([px(x0, y0), px(x1, y0)], fill="black")
    d.line([px(x0, y0), px(x0, y1)], fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        d.text((5, px(x0, y)[1] - 6), f"{y:.0f}", fill="black")
    for x in xs:
        d.text((px(x, y0)[0] - 10, h - bottom + 5), f"{x:g}", fill="black")
    d.text((w // 2 - 60, h - 18), x_label, fill="black")
    d.text((5, 8), f"{title}: {y_label}", fill="black")  # ASCII: PIL's default font
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        d.line([px(x, y) for x, y in zip(xs, ys, strict=True)], fill=colour, width=2)
        d.text((w - right - 110, top + 14 * i), name, fill=colour)
    return save_image_atomic(path, img)
