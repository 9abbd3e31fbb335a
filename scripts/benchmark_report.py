"""Text tables and a self-contained HTML page (inline SVG charts) for benchmark results."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any, TextIO

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f")
Series = dict[str, list[float | None]]


# -- text -----------------------------------------------------------------------------------------


def num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def errors_text(errors: dict[str, int]) -> str:
    return " ".join(f"{key}x{count}" for key, count in sorted(errors.items())) or "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) for each table of a report; shared by the text and HTML output."""
    results = report["results"]
    if report["mode"] == "models":
        models = [
            [
                row["model"],
                str(row["backend"] or "-"),
                "yes" if row["managed"] else "no",
                str(row["dims"] or "-"),
                str(row["prompt_tokens"] if row["prompt_tokens"] is not None else "-"),
                num(row["cold_ms"], suffix=" ms"),
                num(row["warm_ms"]["p50"], suffix=" ms"),
                num(row["warm_ms"]["p95"], suffix=" ms"),
                errors_text(row["errors"]),
            ]
            for row in results["models"]
        ]
        headers = [
            "model",
            "backend",
            "managed",
            "dims",
            "tokens",
            "cold",
            "warm p50",
            "warm p95",
            "errors",
        ]
        out = [("Models", headers, models)]
        if results["swaps"]:
            swaps = [
                [
                    swap["backend"],
                    " <-> ".join(swap["models"]),
                    str(len(swap["times_ms"])),
                    num(swap["p50_ms"], suffix=" ms"),
                    num(swap["max_ms"], suffix=" ms"),
                    errors_text(swap["errors"]),
                ]
                for swap in results["swaps"]
            ]
            out.append(("Swaps", ["backend", "models", "n", "p50", "max", "errors"], swaps))
        return out
    if report["mode"] in ("load", "rerank"):
        rows = [
            [
                cell["model"],
                str(cell["concurrency"]),
                str(cell["batch"]),
                num(cell["requests_per_s"]),
                num(cell["inputs_per_s"], 0),
                num(cell["latency_ms"]["p50"], suffix=" ms"),
                num(cell["latency_ms"]["p95"], suffix=" ms"),
                num(cell["latency_ms"]["p99"], suffix=" ms"),
                errors_text(cell["errors"]),
                str(cell.get("cut_off", 0)),  # absent from reports older than --grace
            ]
            for cell in results["cells"]
        ]
        if report["mode"] == "rerank":  # a cell's batch is its documents per request
            headers = ["model", "conc", "docs", "req/s", "docs/s", "p50", "p95", "p99",
                       "errors", "cut off"]
            return [("Rerank", headers, rows)]
        headers = ["model", "conc", "batch", "req/s", "inputs/s", "p50", "p95", "p99", "errors",
                   "cut off"]
        return [("Load", headers, rows)]
    rows = []
    for cell in results["cells"]:
        process = cell["gateway_process"] or {}
        added = cell["added_ms"]
        rows.append(
            [
                f"c={cell['concurrency']} b={cell['batch']}",
                num(cell["gateway"]["latency_ms"]["p50"], 2, " ms"),
                num(cell["upstream"]["latency_ms"]["p50"], 2, " ms"),
                num(added["p50"], 2, " ms"),
                num(added["p95"], 2, " ms"),
                num(added["p99"], 2, " ms"),
                num(cell["throughput_ratio"], 3),
                num(process.get("cpu_ms_per_request"), 3),
                num(process.get("rss_peak_mb"), 1, " MB"),
                errors_text(
                    cell["gateway"]["errors"]
                    | {f"up:{k}": v for k, v in cell["upstream"]["errors"].items()}
                ),
            ]
        )
    headers = [
        "cell",
        "gw p50",
        "up p50",
        "+p50",
        "+p95",
        "+p99",
        "thrpt ratio",
        "cpu ms/req",
        "rss peak",
        "errors",
    ]
    return [("Overhead (gateway minus upstream)", headers, rows)]


def print_report(report: dict[str, Any], stream: TextIO) -> None:
    settings = report["settings"]
    stream.write(f"{report['mode']} @ {settings['gateway']} ({settings['encoding_format']})\n")
    for title, headers, rows in tables(report):
        stream.write(f"\n{title}\n{table(headers, rows)}\n")
    stream.flush()


# -- SVG ------------------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def tick_label(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class Frame:
    """Axes, grid, title and legend shared by both chart kinds; categorical x axis."""

    height, left, right, top, bottom = 310, 70, 16, 50, 70

    def __init__(self, title: str, unit: str, categories: list[str], series: Series) -> None:
        self.categories = categories
        self.series = series
        self.width = max(
            520, self.left + self.right + 56 * len(categories) * max(1, len(series) // 2)
        )
        values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
        self.ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]))
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img">',
            f"<title>{html.escape(title)}</title>",
            f'<text x="{self.left}" y="18" class="title">{html.escape(title)}</text>',
            f'<text x="14" y="{self.top + self.plot_h / 2}" class="unit" '
            f'transform="rotate(-90 14 {self.top + self.plot_h / 2})">{html.escape(unit)}</text>',
        ]
        for value in self.ticks:
            y = self.y(value)
            self.parts.append(
                f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" '
                f'class="{"axis" if value == 0 else "grid"}"/>'
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                f"{tick_label(value)}</text>"
            )
        rotate = len(categories) > 6
        for index, label in enumerate(categories):
            x = self.x_center(index)
            y = self.top + self.plot_h + 16
            transform = f' transform="rotate(-35 {x:.1f} {y})"' if rotate else ""
            anchor = "end" if rotate else "middle"
            self.parts.append(
                f'<text x="{x:.1f}" y="{y}" class="tick" text-anchor="{anchor}"{transform}>'
                f"{html.escape(label)}</text>"
            )
        x = self.left
        for index, name in enumerate(series):
            color = PALETTE[index % len(PALETTE)]
            self.parts.append(
                f'<rect x="{x}" y="27" width="10" height="10" fill="{color}"/>'
                f'<text x="{x + 14}" y="36" class="legend">{html.escape(name)}</text>'
            )
            x += 24 + 7 * len(name)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float) -> float:
        low, high = self.ticks[0], self.ticks[-1]
        return self.top + self.plot_h * (1 - (value - low) / (high - low))

    def x_center(self, index: int) -> float:
        return self.left + self.plot_w * (index + 0.5) / len(self.categories)

    def close(self) -> str:
        return "\n".join([*self.parts, "</svg>"])


def bar_chart(title: str, unit: str, categories: list[str], series: Series) -> str:
    frame = Frame(title, unit, categories, series)
    group = frame.plot_w / max(1, len(categories))
    bar = group * 0.8 / max(1, len(series))
    zero = frame.y(0.0)
    for s_index, (name, values) in enumerate(series.items()):
        color = PALETTE[s_index % len(PALETTE)]
        for index, value in enumerate(values):
            if value is None or not math.isfinite(value):
                continue
            x = frame.left + group * index + group * 0.1 + bar * s_index
            top = min(zero, frame.y(value))
            frame.parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                f'height="{abs(zero - frame.y(value)):.1f}" fill="{color}">'
                f"<title>{html.escape(name)} {html.escape(categories[index])}: "
                f"{value:.3f} {html.escape(unit)}</title></rect>"
            )
    return frame.close()


def line_chart(title: str, unit: str, categories: list[str], series: Series) -> str:
    frame = Frame(title, unit, categories, series)
    for s_index, (name, values) in enumerate(series.items()):
        color = PALETTE[s_index % len(PALETTE)]
        points = [
            (frame.x_center(i), frame.y(v), v)
            for i, v in enumerate(values)
            if v is not None and math.isfinite(v)
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            frame.parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        for x, y, v in points:
            frame.parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
                f"<title>{html.escape(name)}: {v:.3f} {html.escape(unit)}</title></circle>"
            )
    return frame.close()


# -- HTML -----------------------------------------------------------------------------------------


def charts(report: dict[str, Any]) -> list[str]:
    results = report["results"]
    if report["mode"] == "models":
        rows = results["models"]
        names = [row["model"] for row in rows]
        out = [
            bar_chart(
                "Warm latency per model",
                "ms",
                names,
                {
                    "p50": [row["warm_ms"]["p50"] for row in rows],
                    "p95": [row["warm_ms"]["p95"] for row in rows],
                },
            ),
            bar_chart(
                "First (cold) request per model",
                "ms",
                names,
                {"cold": [row["cold_ms"] for row in rows]},
            ),
        ]
        if results["swaps"]:
            swaps = results["swaps"]
            out.append(
                bar_chart(
                    "Swap time per backend",
                    "ms",
                    [s["backend"] for s in swaps],
                    {
                        "p50": [s["p50_ms"] for s in swaps],
                        "max": [s["max_ms"] for s in swaps],
                    },
                )
            )
        return out
    cells = results["cells"]
    if report["mode"] in ("load", "rerank"):
        unit, size = ("docs/s", "docs") if report["mode"] == "rerank" else ("inputs/s", "batch")
        out = []
        for model in dict.fromkeys(cell["model"] for cell in cells):
            mine = [cell for cell in cells if cell["model"] == model]
            concurrency = sorted({cell["concurrency"] for cell in mine})
            batches = sorted({cell["batch"] for cell in mine})
            by_key = {(cell["concurrency"], cell["batch"]): cell for cell in mine}

            def per_batch(
                metric: Any,
                by_key: dict = by_key,
                concurrency: list = concurrency,
                batches: list = batches,
            ) -> Series:
                return {
                    f"{size} {b}": [
                        metric(by_key[(c, b)]) if (c, b) in by_key else None for c in concurrency
                    ]
                    for b in batches
                }

            labels = [f"c={c}" for c in concurrency]
            out.append(
                line_chart(
                    f"{model}: {unit} by concurrency",
                    unit,
                    labels,
                    per_batch(lambda cell: cell["inputs_per_s"]),
                )
            )
            out.append(
                line_chart(
                    f"{model}: p95 latency by concurrency",
                    "ms",
                    labels,
                    per_batch(lambda cell: cell["latency_ms"]["p95"]),
                )
            )
            out.append(
                bar_chart(
                    f"{model}: latency percentiles per cell",
                    "ms",
                    [f"c{c['concurrency']} b{c['batch']}" for c in mine],
                    {q: [c["latency_ms"][q] for c in mine] for q in ("p50", "p95", "p99")},
                )
            )
        return out
    labels = [f"c{c['concurrency']} b{c['batch']}" for c in cells]
    out = [
        bar_chart(
            "Latency added by the gateway",
            "ms",
            labels,
            {q: [c["added_ms"][q] for c in cells] for q in ("p50", "p95", "p99")},
        ),
        bar_chart(
            "p50 latency: gateway vs upstream",
            "ms",
            labels,
            {
                "gateway": [c["gateway"]["latency_ms"]["p50"] for c in cells],
                "upstream": [c["upstream"]["latency_ms"]["p50"] for c in cells],
            },
        ),
        bar_chart(
            "Throughput: gateway / upstream",
            "ratio",
            labels,
            {"inputs/s ratio": [c["throughput_ratio"] for c in cells]},
        ),
    ]
    if any(c["gateway_process"] for c in cells):
        out.append(
            bar_chart(
                "Gateway CPU per request",
                "ms",
                labels,
                {
                    "cpu ms/request": [
                        (c["gateway_process"] or {}).get("cpu_ms_per_request") for c in cells
                    ],
                },
            )
        )
    return out


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
table.plain td, table.plain th { text-align: left; }
svg { display: block; margin: 12px 0; background: #fff; }
svg .title { font-weight: 600; font-size: 13px; }
svg .tick, svg .legend, svg .unit { font-size: 11px; fill: #444; }
svg .grid { stroke: #e6e6e6; } svg .axis { stroke: #888; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
"""


def html_table(headers: list[str], rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: dict[str, Any]) -> str:
    settings = report["settings"]
    title = f"Embedding benchmark: {report['mode']} @ {settings['gateway']}"
    setting_rows = [[key, str(value)] for key, value in settings.items()]
    env_rows = [[key, str(value)] for key, value in report["environment"].items()]
    sections = [
        f"<h2>{html.escape(name)}</h2>{html_table(headers, rows)}"
        for name, headers, rows in tables(report)
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{html.escape(report['started_at'])} to {html.escape(report['finished_at'])}</p>",
            "<h2>Charts</h2>",
            *charts(report),
            *sections,
            "<h2>Settings</h2>",
            html_table(["setting", "value"], setting_rows, "plain"),
            "<h2>Environment</h2>",
            html_table(["", "value"], env_rows, "plain"),
            "</body></html>",
            "",
        ]
    )
