"""A line plot as inline SVG: axes, ticks, one line per series, point markers with their value as
a tooltip, and a legend. No script, no external file, and no namespace URL (SVG inline in HTML
needs none), so the page names no address at all."""

from __future__ import annotations

import math
from html import escape

from ccl_cache.report.model import LinePlot

# Colour-blind-safe palette (Okabe & Ito); cycled when there are more series.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
WIDTH, HEIGHT = 640, 380
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 34, 48
LEGEND_ROW = 18


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(x: float) -> str:
    return f"{x:g}"


def render_svg(plot: LinePlot) -> str:
    """The ``<svg>`` element of ``plot`` (every text escaped)."""
    values = [y for s in plot.series for y in s.ys if math.isfinite(y)]
    lo, hi = plot.y_range if plot.y_range is not None else (min(values, default=0.0), max(values, default=1.0))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    tx = [math.log10(x) if plot.log_x else float(x) for x in plot.xs]
    x_lo, x_hi = min(tx), max(tx)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    legend_h = LEGEND_ROW * len(plot.series)
    height = HEIGHT + legend_h
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(t: float) -> float:
        return LEFT + (t - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (min(max(y, lo), hi) - lo) / (hi - lo)) * plot_h

    out = [f'<svg class="plot" role="img" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" aria-label="{escape(plot.title)}">',
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
           f'<text x="{WIDTH / 2:.1f}" y="20" text-anchor="middle" font-size="14">{escape(plot.title)}</text>']
    for y in _nice_ticks(lo, hi):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{_fmt(py(y))}" y2="{_fmt(py(y))}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{LEFT - 6}" y="{_fmt(py(y) + 4)}" text-anchor="end" font-size="11">{_label(y)}</text>')
    for x, t in zip(plot.xs, tx):
        out.append(f'<line x1="{_fmt(px(t))}" x2="{_fmt(px(t))}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{_fmt(px(t))}" y="{TOP + plot_h + 16}" text-anchor="middle" font-size="11">'
                   f'{escape(_label(x))}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h + 36}" text-anchor="middle" font-size="12">'
               f'{escape(plot.x_label)}</text>')
    out.append(f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{escape(plot.y_label)}</text>')
    for i, s in enumerate(plot.series):
        colour = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        run: list[str] = []
        runs = [run]
        for t, y in zip(tx, s.ys):
            if math.isfinite(y):
                run.append(f"{_fmt(px(t))},{_fmt(py(y))}")
            elif run:  # a missing value breaks the line
                run = []
                runs.append(run)
        for points in runs:
            if len(points) > 1:
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{" ".join(points)}"/>')
        for x, t, y in zip(plot.xs, tx, s.ys):
            if math.isfinite(y):
                out.append(f'<circle cx="{_fmt(px(t))}" cy="{_fmt(py(y))}" r="3.5" fill="{colour}">'
                           f'<title>{escape(s.label)}: {escape(_label(x))} → {y:.2f}</title></circle>')
        ly = HEIGHT + i * LEGEND_ROW
        out.append(f'<line x1="{LEFT}" x2="{LEFT + 28}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{LEFT + 36}" y="{ly}" font-size="12">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)
