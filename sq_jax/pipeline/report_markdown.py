"""`report.md`: the run report as one markdown table, a row per stage (also the card of the exported dataset)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# sq-jax pipeline run", "", f"Output: `{report['output_dir']}`, seed {report['seed']}.", "",
             "| stage | kind | status | records | seconds | rows/s | stats |", "|---|---|---|---|---|---|---|"]
    for s in report["stages"]:
        secs = f"{s['seconds']:.1f}" if s["seconds"] is not None else ""
        rate = s["counts"].get("rows_per_s", "")
        lines.append(f"| {s['stage']} | {s['kind']} | {s['status']} | {s['counts'].get('records', '')} | {secs} | "
                     f"{_fmt(rate)} | {_fmt(s['stats'])} |")
    return "\n".join(lines) + "\n"

