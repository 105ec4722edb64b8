"""The analytics page's charts, drawn here as inline SVG (no script, nothing fetched from
elsewhere), each with a title and a description for assistive technology, over the hourly
figures of `jobs.ops.hourly_analytics`."""

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from jobs.admin.display import human_bytes
from jobs.ops.hourly_analytics import AnalyticsHour

WIDTH, HEIGHT = 720, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 26
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
HOUR = timedelta(hours=1)
COLORS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#757575",
    "other": "#90caf9",
    "p50": "#1565c0",
    "p95": "#ef6c00",
    "p99": "#6a1b9a",
    "bytes": "#00838f",
}


def _n(value: float) -> str:
    """An SVG coordinate (format_html escapes its arguments into strings first)."""
    return f"{value:.1f}"


def _hour_label(hour: datetime) -> str:
    return hour.strftime("%m-%d %H:00")


class _Frame:
    """An hour axis from the oldest to the newest hour with jobs (one slot per hour, so
    gaps show) and a y axis from 0 to top."""

    def __init__(self, rows: Sequence[AnalyticsHour], top: float) -> None:
        self.first = min(row.hour for row in rows)
        last = max(row.hour for row in rows)
        self.slots = int((last - self.first) / HOUR) + 1
        self.slot_w = PLOT_W / self.slots
        self.top = top if top > 0 else 1.0

    def x(self, hour: datetime) -> float:
        return LEFT + int((hour - self.first) / HOUR) * self.slot_w

    def y(self, value: float) -> float:
        return TOP + PLOT_H - min(value, self.top) / self.top * PLOT_H

    def axes(self, label: Callable[[float], str]) -> SafeString:
        ticks = [0.0, self.top / 2, self.top]
        grid = format_html_join(
            "",
            '<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#ccc" stroke-width="1"/>'
            '<text x="{3}" y="{4}" text-anchor="end" font-size="11" fill="currentColor">{5}</text>',
            ((LEFT, LEFT + PLOT_W, _n(self.y(t)), LEFT - 6, _n(self.y(t) + 4), label(t)) for t in ticks),
        )
        last = self.first + (self.slots - 1) * HOUR
        hours = format_html(
            '<text x="{}" y="{}" font-size="11" fill="currentColor">{}</text>'
            '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="currentColor">{}</text>',
            LEFT,
            HEIGHT - 8,
            _hour_label(self.first),
            LEFT + PLOT_W,
            HEIGHT - 8,
            _hour_label(last) + " UTC",
        )
        return format_html("{}{}", grid, hours)


def _legend_key(name: str, color: str, width: float | None = None, dash: str = "") -> SafeString:
    """A square of the colour (bars), or a stretch of the line as the chart draws it."""
    if width is None:
        return format_html(
            '<li><span class="analytics-key" style="background:{}"></span> {}</li>', color, name
        )
    return format_html(
        '<li><svg width="28" height="10" aria-hidden="true"><line x1="0" x2="28" y1="5" y2="5" stroke="{}"'
        ' stroke-width="{}"{}/></svg> {}</li>',
        color,
        width,
        format_html(' stroke-dasharray="{}"', dash) if dash else "",
        name,
    )


def _svg(
    chart_id: str,
    title: str,
    desc: str,
    body: SafeString,
    legend: Sequence[tuple[str, str] | tuple[str, str, float, str]],
) -> SafeString:
    keys = format_html_join("", "{}", ((_legend_key(*key),) for key in legend))
    return format_html(
        '<figure class="analytics-chart">'
        '<svg viewBox="0 0 {} {}" width="100%" role="img" aria-labelledby="{}-title {}-desc"'
        ' xmlns="http://www.w3.org/2000/svg">'
        '<title id="{}-title">{}</title><desc id="{}-desc">{}</desc>{}</svg>'
        '<figcaption><strong>{}</strong><ul class="analytics-legend">{}</ul></figcaption></figure>',
        WIDTH,
        HEIGHT,
        chart_id,
        chart_id,
        chart_id,
        title,
        chart_id,
        desc,
        body,
        title,
        keys,
    )


def _bar(frame: _Frame, hour: datetime, low: float, high: float, color: str, tip: str) -> SafeString:
    top, bottom = frame.y(high), frame.y(low)
    return format_html(
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        _n(frame.x(hour) + frame.slot_w * 0.1),
        _n(top),
        _n(max(frame.slot_w * 0.8, 1.0)),
        _n(max(bottom - top, 0.0)),
        color,
        tip,
    )


def success_rate_chart(rows: Sequence[AnalyticsHour]) -> SafeString:
    frame = _Frame(rows, 1.0)
    rated = [row for row in rows if row.success_rate is not None]
    bars = format_html_join(
        "",
        "{}",
        (
            (
                _bar(
                    frame,
                    row.hour,
                    0,
                    row.success_rate or 0.0,
                    COLORS["completed"],
                    f"{_hour_label(row.hour)}: {(row.success_rate or 0) * 100:.1f} % "
                    f"({row.completed} completed, {row.failed} failed)",
                ),
            )
            for row in rated
        ),
    )
    if rated:
        worst = min(rated, key=lambda row: row.success_rate or 0.0)
        desc = (
            f"Completed jobs as a share of completed plus failed, per hour, for {len(rated)} hour(s); "
            f"lowest {(worst.success_rate or 0) * 100:.1f} % at {_hour_label(worst.hour)} UTC."
        )
    else:
        desc = "No job completed or failed in these hours."
    body = format_html("{}{}", frame.axes(lambda t: f"{t * 100:.0f} %"), bars)
    return _svg("chart-success", "Success rate per hour", desc, body, [("success rate", COLORS["completed"])])


# The duration lines, drawn in this order: the widest underneath, so that where two
# percentiles are equal (few jobs in an hour) the one on top still shows inside the other.
# name, field, stroke width, dash pattern ("" = solid), marker.
DURATION_SERIES = (
    ("p99", "p99_duration_s", 6.0, "", "square"),
    ("p95", "p95_duration_s", 3.0, "6 3", "diamond"),
    ("p50", "p50_duration_s", 1.5, "", "circle"),
)


def _marker(shape: str, x: float, y: float, color: str, tip: str) -> SafeString:
    if shape == "circle":
        return format_html(
            '<circle cx="{}" cy="{}" r="3" fill="{}"><title>{}</title></circle>', _n(x), _n(y), color, tip
        )
    if shape == "square":
        return format_html(
            '<rect x="{}" y="{}" width="8" height="8" fill="{}"><title>{}</title></rect>',
            _n(x - 4),
            _n(y - 4),
            color,
            tip,
        )
    points = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
    return format_html('<polygon points="{}" fill="{}"><title>{}</title></polygon>', points, color, tip)


def duration_chart(rows: Sequence[AnalyticsHour]) -> SafeString:
    values = [
        getattr(row, field)
        for row in rows
        for _, field, *_ in DURATION_SERIES
        if getattr(row, field) is not None
    ]
    frame = _Frame(rows, max(values, default=1.0))
    parts = []
    for name, field, width, dash, shape in DURATION_SERIES:
        points = [
            (
                frame.x(row.hour) + frame.slot_w / 2,
                frame.y(getattr(row, field)),
                row.hour,
                getattr(row, field),
            )
            for row in sorted(rows, key=lambda row: row.hour)
            if getattr(row, field) is not None
        ]
        parts.append(
            format_html(
                '<g class="series-{}">'
                '<polyline fill="none" stroke="{}" stroke-width="{}"{} points="{}"/>{}</g>',
                name,
                COLORS[name],
                width,
                format_html(' stroke-dasharray="{}"', dash) if dash else "",
                " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points),
                format_html_join(
                    "",
                    "{}",
                    (
                        (_marker(shape, x, y, COLORS[name], f"{_hour_label(hour)}: {name} {value:.2f} s"),)
                        for x, y, hour, value in points
                    ),
                ),
            )
        )
    peak = max((row.p99_duration_s or 0.0 for row in rows), default=0.0)
    desc = (
        f"Median, 95th and 99th percentile durations of completed jobs per hour, in seconds; "
        f"highest p99 {peak:.2f} s."
        if values
        else "No completed job with a duration in these hours."
    )
    body = format_html(
        "{}{}", frame.axes(lambda t: f"{t:.1f} s"), format_html_join("", "{}", ((p,) for p in parts))
    )
    legend = [
        (f"{name} ({'dashed' if dash else 'solid'}, {shape}s)", COLORS[name], width, dash)
        for name, _, width, dash, shape in reversed(DURATION_SERIES)
    ]
    return _svg("chart-durations", "Durations per hour (p50, p95, p99)", desc, body, legend)


def jobs_volume_chart(rows: Sequence[AnalyticsHour]) -> SafeString:
    frame = _Frame(rows, max(row.total_jobs for row in rows))
    bars = []
    for row in rows:
        other = row.total_jobs - row.completed - row.failed - row.cancelled
        base = 0.0
        for name, count in (
            ("completed", row.completed),
            ("failed", row.failed),
            ("cancelled", row.cancelled),
            ("other", other),
        ):
            if count:
                tip = f"{_hour_label(row.hour)}: {count} {name} of {row.total_jobs} job(s)"
                bars.append(_bar(frame, row.hour, base, base + count, COLORS[name], tip))
                base += count
    busiest = max(rows, key=lambda row: row.total_jobs)
    desc = (
        f"Jobs created per hour by outcome, {sum(row.total_jobs for row in rows)} in all; "
        f"busiest hour {_hour_label(busiest.hour)} UTC with {busiest.total_jobs}."
    )
    body = format_html(
        "{}{}", frame.axes(lambda t: f"{t:.0f}"), format_html_join("", "{}", ((b,) for b in bars))
    )
    legend = [
        ("completed", COLORS["completed"]),
        ("failed", COLORS["failed"]),
        ("cancelled", COLORS["cancelled"]),
        ("queued, processing or expired", COLORS["other"]),
    ]
    return _svg("chart-jobs", "Jobs per hour", desc, body, legend)


def bytes_volume_chart(rows: Sequence[AnalyticsHour]) -> SafeString:
    frame = _Frame(rows, max(row.bytes_staged for row in rows))
    bars = format_html_join(
        "",
        "{}",
        (
            (
                _bar(
                    frame,
                    row.hour,
                    0,
                    row.bytes_staged,
                    COLORS["bytes"],
                    f"{_hour_label(row.hour)}: {human_bytes(row.bytes_staged)}",
                ),
            )
            for row in rows
            if row.bytes_staged
        ),
    )
    desc = (
        f"Bytes of completed files written to storage per hour, "
        f"{human_bytes(sum(row.bytes_staged for row in rows))} in all."
    )
    body = format_html("{}{}", frame.axes(human_bytes), bars)
    return _svg("chart-bytes", "Bytes staged per hour", desc, body, [("bytes staged", COLORS["bytes"])])
