"""Small server-rendered SVG charts: no chart library, no CDN, no script, no inline style
(presentation attributes only, which the Content-Security-Policy allows)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 250
LEFT, RIGHT, TOP, BOTTOM = 62, 12, 34, 46
COLOUR = "#1f5f8b"


def _frame(
    title: str, axes: tuple[str, str], y_max: float, y_format: str, body: list[str], x_labels
) -> SafeString:
    inner_h = HEIGHT - TOP - BOTTOM
    x_axis, y_axis = (escape(a) for a in axes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'class="chart" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold" '
        f'fill="#222" class="chart-title">{escape(title)}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle" '
        f'font-size="12" fill="#333" class="x-axis">{x_axis}</text>',
        f'<text x="14" y="{TOP + inner_h / 2}" text-anchor="middle" font-size="12" fill="#333" '
        f'transform="rotate(-90 14 {TOP + inner_h / 2})" class="y-axis">{y_axis}</text>',
    ]
    for i in range(5):  # horizontal grid lines with their values
        value = y_max * i / 4
        y = TOP + inner_h * (1 - i / 4)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{format(value, y_format)}</text>'
        )
    parts.extend(body)
    for x, label in x_labels:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
            f'font-size="11" fill="#555">{escape(label)}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + inner_h}" '
        f'y2="{TOP + inner_h}" stroke="#888" stroke-width="1"/></svg>'
    )
    return mark_safe("".join(parts))  # every text in it went through escape()


def _label_every(n: int) -> int:
    return max(1, -(-n // 8))  # at most about 8 axis labels


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    x_axis: str,
    y_axis: str,
    y_format: str = ".0f",
    y_max: float | None = None,
) -> SafeString:
    """Vertical bars, one per label, with a title and both axes named; each bar's value in
    its tooltip."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = y_max if y_max is not None else max([*values, 1])
    slot = inner_w / max(len(values), 1)
    body, x_labels, every = [], [], _label_every(len(labels))
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = inner_h * (value / top if top else 0)
        x = LEFT + i * slot
        body.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{TOP + inner_h - h:.1f}" '
            f'width="{slot * 0.8:.1f}" height="{h:.1f}" fill="{COLOUR}">'
            f"<title>{escape(label)}: {format(value, y_format)}</title></rect>"
        )
        if i % every == 0:
            x_labels.append((x + slot / 2, label))
    return _frame(title, (x_axis, y_axis), top, y_format, body, x_labels)


def line_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    x_axis: str,
    y_axis: str,
    y_format: str = ".0%",
    y_max: float = 1.0,
) -> SafeString:
    """A line through the points that have a value (None: no data that day), with markers."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(values), 1)
    points, body, x_labels = [], [], []
    every = _label_every(len(labels))
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + (i + 0.5) * slot
        if i % every == 0:
            x_labels.append((x, label))
        if value is None:
            continue
        y = TOP + inner_h * (1 - value / y_max)
        points.append(f"{x:.1f},{y:.1f}")
        body.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLOUR}">'
            f"<title>{escape(label)}: {format(value, y_format)}</title></circle>"
        )
    if len(points) > 1:
        body.insert(
            0,
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{COLOUR}" '
            'stroke-width="2"/>',
        )
    return _frame(title, (x_axis, y_axis), y_max, y_format, body, x_labels)
