"""The dashboard's charts, drawn here as SVG, so the admin needs no script and no network.

Each chart has a value axis with round steps (1, 2 or 5 times a power of ten), a labelled gridline at
each, labels under the bars and the axis's unit, so a bar can be read without hovering it.
"""

from __future__ import annotations

import math
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

OUTCOME_COLOURS = {"completed": "#3a7d44", "failed": "#c0392b", "cancelled": "#9a9a9a"}
# p95 is drawn first, p50 over it: the light part of a bar is how much slower the slowest runs were.
RUN_TIME_COLOURS = {"p95": "#9cc3d9", "p50": "#205067"}


def axis_ticks(peak: float, *, whole: bool = False, intervals: int = 5) -> tuple[list[float], int]:
    """Tick values from 0 to the first round step at or above ``peak``, and the decimals they need.

    About ``intervals`` steps; ``whole`` keeps steps to whole numbers (counts of jobs).
    """
    peak = peak if peak > 0 else 1
    raw = peak / intervals
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if whole:
        step = max(1, round(step))
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    count = math.ceil(peak / step - 1e-9)
    return [round(i * step, decimals) for i in range(count + 1)], decimals


def svg_bars(
    *,
    bars: list[tuple[str, dict[str, float]]],
    colours: dict[str, str],
    title: str,
    x_title: str,
    unit: str = "",
    prefix: str = "",
    stacked: bool = True,
    whole: bool = False,
    min_decimals: int = 0,
    width: int = 720,
    height: int = 200,
    label_every: int = 1,
) -> SafeString:
    """A bar chart: ``bars`` is ``[(label, {series: value})]``; each bar has a tooltip.

    ``stacked`` piles the series up (jobs by outcome); otherwise each series starts at 0 and later
    ones are drawn over earlier ones (p50 over p95), so earlier series must be the larger.
    """
    left, right, bottom, top = 60, 8, 36, 10
    plot_w, plot_h = width - left - right, height - bottom - top
    heights = [sum(values.values()) if stacked else max(values.values(), default=0) for _, values in bars]
    ticks, decimals = axis_ticks(max(heights, default=0), whole=whole)
    decimals = max(decimals, min_decimals)
    ceiling = ticks[-1]
    base = top + plot_h
    slot = plot_w / max(len(bars), 1)

    def value_text(value: float, places: int) -> str:
        return f"{prefix}{value:,.{places}f}{unit}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gw-chart" role="img" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet"><title>{escape(title)}</title>',
    ]
    for tick in ticks:
        y = base - tick / ceiling * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'class="{"gw-axis" if tick == 0 else "gw-grid"}"/>'
            f'<text x="{left - 6}" y="{y + 3.5:.1f}" text-anchor="end" class="gw-tick" data-tick="{tick}">'
            f"{escape(value_text(tick, decimals))}</text>"
        )
    for i, (label, values) in enumerate(bars):
        x = left + i * slot + slot * 0.1
        y = base
        tip = ", ".join(f"{name} {value_text(value, _places(value))}" for name, value in values.items())
        for name, value in values.items():
            if value <= 0:
                continue
            h = value / ceiling * plot_h
            y = y - h if stacked else base - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{colours.get(name, "#417690")}" data-series="{escape(name)}" '
                f'data-value="{value}"><title>{escape(label)}: {escape(tip)}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{base + 14}" text-anchor="middle" class="gw-tick">'
                f"{escape(label)}</text>"
            )
    parts.append(
        f'<text x="{width - right}" y="{height - 4}" text-anchor="end" class="gw-tick gw-axis-title">'
        f"{escape(x_title)}</text></svg>"
    )
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text above is escaped


def _places(value: float) -> int:
    """Decimals that show a tooltip's value as it is (up to 4)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return len(text.partition(".")[2])


def dashboard_charts(figures: dict[str, Any]) -> dict[str, SafeString]:
    hours = [
        (row["hour"][11:13] + "h", {name: row[name] for name in OUTCOME_COLOURS})
        for row in figures["jobsPerHour"]
    ]
    run_times = [
        (row["hour"][11:13] + "h", {"p95": row["p95Seconds"] or 0, "p50": row["p50Seconds"] or 0})
        for row in figures["runTimePerHour"]
    ]
    days = [(row["day"][5:], {"cost": float(row["costUsd"])}) for row in figures["costPerDay"]]
    hourly: dict[str, Any] = {"x_title": "hour finished (UTC)", "label_every": 3}
    return {
        "jobs_per_hour": svg_bars(
            bars=hours,
            colours=OUTCOME_COLOURS,
            title="Jobs finished per hour, by outcome",
            whole=True,
            **hourly,
        ),
        "run_time_per_hour": svg_bars(
            bars=run_times,
            colours=RUN_TIME_COLOURS,
            title="CLI run time per hour: p50 and p95",
            unit=" s",
            stacked=False,
            **hourly,
        ),
        "cost_per_day": svg_bars(
            bars=days,
            colours={"cost": "#417690"},
            title="CLI cost per day (USD)",
            x_title="day (UTC)",
            prefix="$",
            min_decimals=2,
            label_every=2,
        ),
    }
