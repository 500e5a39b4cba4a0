"""The dashboard's charts, drawn here as SVG, so the admin needs no script and no network."""

from __future__ import annotations

from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

OUTCOME_COLOURS = {"completed": "#3a7d44", "failed": "#c0392b", "cancelled": "#9a9a9a"}


def svg_stacked_bars(
    *,
    bars: list[tuple[str, dict[str, float]]],
    colours: dict[str, str],
    title: str,
    unit: str = "",
    prefix: str = "",
    width: int = 720,
    height: int = 180,
    label_every: int = 1,
) -> SafeString:
    """A stacked bar chart: ``bars`` is ``[(label, {series: value})]``; each bar has a tooltip."""
    left, bottom, top = 48, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(values.values()) for _, values in bars), default=0) or 1
    slot = plot_w / max(len(bars), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gw-chart" role="img" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" class="gw-axis"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end" class="gw-tick">{escape(prefix)}'
        f"{escape(_short(peak))}{escape(unit)}</text>",
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="gw-tick">0</text>',
    ]
    for i, (label, values) in enumerate(bars):
        x = left + i * slot + slot * 0.1
        y: float = top + plot_h
        tip = ", ".join(f"{name} {prefix}{_short(value)}{unit}" for name, value in values.items())
        for name, value in values.items():
            if value <= 0:
                continue
            h = value / peak * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
                f'fill="{colours.get(name, "#417690")}" data-series="{escape(name)}" '
                f'data-value="{value}"><title>{escape(label)}: {escape(tip)}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{height - 6}" text-anchor="middle" class="gw-tick">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text above is escaped


def _short(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}".rstrip("0")


def dashboard_charts(figures: dict[str, Any]) -> dict[str, SafeString]:
    hours = [
        (row["hour"][11:13] + "h", {name: row[name] for name in OUTCOME_COLOURS})
        for row in figures["jobsPerHour"]
    ]
    days = [(row["day"][5:], {"cost": float(row["costUsd"])}) for row in figures["costPerDay"]]
    return {
        "jobs_per_hour": svg_stacked_bars(
            bars=hours, colours=OUTCOME_COLOURS, title="Jobs finished per hour, by outcome", label_every=3
        ),
        "cost_per_day": svg_stacked_bars(
            bars=days, colours={"cost": "#417690"}, title="CLI cost per day (USD)", prefix="$", label_every=2
        ),
    }
