"""The audit's PNG chart: spend per UTC day stacked by outcome, and per requester.

matplotlib is an optional extra (``pip install 'vastops[chart]'``); without it
``chart_available()`` is False and the text report carries the same numbers. The Agg backend
draws into memory: no display, no files unless the caller writes the bytes.
"""

from __future__ import annotations

import importlib.util
import io
from typing import Any

from bot.audit import BUCKETS, AuditReport

COLOURS = {"useful": "#2ecc71", "idle": "#f1c40f", "failed": "#e74c3c", "running": "#3498db"}
INSTALL_HINT = "install the chart extra for the PNG chart: pip install 'vastops[chart]'"


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed."""


def chart_available() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def render_png(report: AuditReport) -> bytes:
    """The chart as PNG bytes; raises ``ChartUnavailable`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartUnavailable(INSTALL_HINT) from exc

    # A Figure (not pyplot) keeps no global state between reports in a long-running bot. Mathtext
    # is off: "$" in a title or a user's name is a dollar, not a formula.
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
        by_day, by_user = fig.subplots(1, 2, width_ratios=[3, 2])
        _stacked(by_day, report.daily, "Spend per day (UTC)")
        _stacked(by_user, report.per_user, "Spend per requester")
        who = f" · {report.user}" if report.user else ""
        fig.suptitle(f"vastops audit{who}: ${report.billed_usd:,.2f} billed, ${report.waste_usd:,.2f} wasted")
        out = io.BytesIO()
        fig.savefig(out, format="png")
    return out.getvalue()


def _stacked(ax: Any, data: dict[str, dict[str, float]], title: str) -> None:
    labels = list(data) or ["(none)"]
    bottom = [0.0] * len(labels)
    for bucket in BUCKETS:
        values = [data.get(label, {}).get(bucket, 0.0) for label in labels]
        if not any(values):
            continue
        ax.bar(labels, values, bottom=bottom, label=bucket, color=COLOURS[bucket])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(title)
    ax.set_ylabel("US$")
    ax.tick_params(axis="x", labelrotation=45)
    if any(bottom):
        ax.legend()
