"""The side-by-side table: figures as rows, setups as columns, ratios against the references.

Every figure gets its value row, then a `vs direct`, a `vs nginx-proxy` and (when the nginx pair
ran) a `vs nginx pair` row (value divided by that reference's value), which stay meaningful when
the machine is noisy. The same rows are written as aligned plain text (printed), markdown and JSON
(into bench/results/), with summary lines (CPU per 1,000 requests/s) under the table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.measure import RATES, SetupResult, rate_keys
from harness.setups import REFERENCES


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    better: str  # "higher" or "lower"
    digits: int
    proxy_only: bool = False  # measured on the proxy processes: nothing to show for direct


FIGURES = (
    Figure("rps", "requests/s, 50 conns", "higher", 0),
    Figure("req_per_cpu_s", "requests per proxy CPU-s", "higher", 0, proxy_only=True),
    Figure("cpu_s", "proxy CPU-s in that run", "lower", 2, proxy_only=True),
    Figure("p50_ms", "p50 ms, 1 conn", "lower", 3),
    Figure("p99_ms", "p99 ms, 1 conn", "lower", 3),
    Figure("added_p50_ms", "added p50 ms vs direct", "lower", 3),
    Figure("added_p99_ms", "added p99 ms vs direct", "lower", 3),
    Figure("body_rps", "16 KiB requests/s", "higher", 0),
    Figure("body_mib_s", "16 KiB MiB/s", "higher", 1),
    Figure("conn_rps", "new connections/s", "higher", 0),
    Figure("h2_rps", "HTTP/2 requests/s", "higher", 0),
    *(
        Figure(key, f"{label} ms at {rate:,} req/s, fixed", "lower", 3)
        for rate in RATES
        for key, label in zip(rate_keys(rate), ("p50", "p99", "p99.9"), strict=True)
    ),
    Figure("vcpu_per_krps", "vCPU per 1,000 req/s, per proxy", "lower", 3, proxy_only=True),
    *(
        Figure(f"vcpu_per_krps_{rate}", f"vCPU per 1,000 req/s, per proxy, at {rate:,}", "lower", 3, proxy_only=True)
        for rate in RATES[:-1]
    ),
    Figure("rss_mib", "peak RSS MiB, proxy", "lower", 1, proxy_only=True),
    Figure("idle_kib", "KiB per idle keep-alive conn (8,000)", "lower", 2, proxy_only=True),
)
REFERENCE_LABELS = {"nginx-2-mtls": "nginx pair"}  # ratio row titles other than the setup's key
ISTIO_VCPU_PER_KRPS = 0.20  # Istio's published figure for its Envoy sidecar, per 1,000 requests/s


def add_derived(results: list[SetupResult]) -> None:
    """Added latency: each setup's p50/p99 minus direct's, measured in the same run."""
    direct = next((r for r in results if r.key == "direct"), None)
    for result in results:
        for which in ("p50_ms", "p99_ms"):
            mine = result.figures.get(which)
            base = direct.figures.get(which) if direct else None
            result.figures[f"added_{which}"] = mine - base if mine is not None and base is not None else None
            if which in result.notes:
                result.notes[f"added_{which}"] = result.notes[which]


def cell(result: SetupResult, figure: Figure) -> str:
    """The value with its digits and a `*` when noted; `-` for no such value (direct's proxy figures,
    a step this setup does not run), `failed` or `n/a` for a value missing for a reason."""
    value = result.figures.get(figure.key)
    if value is None:
        if figure.proxy_only and result.key == "direct":
            return "-"
        if figure.key not in result.figures and not result.failure:
            return "-"
        return "failed" if result.failure else "n/a"
    mark = "*" if figure.key in result.notes else ""
    return f"{value:,.{figure.digits}f}{mark}"


def ratio(result: SetupResult, reference: SetupResult | None, figure: Figure) -> str:
    value = result.figures.get(figure.key)
    base = reference.figures.get(figure.key) if reference else None
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def rows(
    results: list[SetupResult], figures: tuple[Figure, ...] = FIGURES, references: tuple[str, ...] = REFERENCES
) -> list[list[str]]:
    """Header row, then per figure its value row and one ratio row per reference that has values."""
    by_key = {result.key: result for result in results}
    table = [["figure", "better", *(result.title for result in results)]]
    for figure in figures:
        table.append([figure.label, figure.better, *(cell(result, figure) for result in results)])
        for ref_key in references:
            ratios = [ratio(result, by_key.get(ref_key), figure) for result in results]
            if any(text != "-" for text in ratios):
                table.append([f"  vs {REFERENCE_LABELS.get(ref_key, ref_key)}", "", *ratios])
    return table


def align(table: list[list[str]]) -> str:
    """Plain text: first two columns left-aligned, value columns right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        parts = [text.ljust(widths[i]) if i < 2 else text.rjust(widths[i]) for i, text in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(table: list[list[str]]) -> str:
    """A markdown table; ratio rows are set in italics since markdown drops their indent."""
    table = [[f"_{row[0].strip()}_" if row[0].startswith("  ") else row[0], *row[1:]] for row in table]
    lines = ["| " + " | ".join(row) + " |" for row in table]
    lines.insert(1, "|" + "|".join(["---", "---"] + ["---:"] * (len(table[0]) - 2)) + "|")
    return "\n".join(lines)


def footnotes(results: list[SetupResult], figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Why a column failed (with the process output tail), and every figure marked with * (the
    figures of one column with the same problem on one line)."""
    labels = {figure.key: figure.label for figure in figures}
    lines = []
    for result in results:
        if result.failure:
            lines.append(f"[{result.title}] {result.failure}")
            lines.extend("    " + line for line in result.detail.splitlines())
        by_problem: dict[str, list[str]] = {}
        for key, problem in result.notes.items():
            if not key.startswith("added_"):
                by_problem.setdefault(problem, []).append(labels.get(key, key))
        for problem, figure_labels in by_problem.items():
            lines.append(f"[{result.title}] {'; '.join(figure_labels)}: {problem}")
    return lines


def cpu_summary(results: list[SetupResult]) -> list[str]:
    """One line: vCPU per 1,000 requests/s per proxy, from the fixed 2,000 req/s step, for each setup
    that has it, next to Istio's published figure for its sidecar."""
    parts = []
    for result in results:
        value = result.figures.get("vcpu_per_krps")
        if value is not None:
            mark = "*" if "vcpu_per_krps" in result.notes else ""
            low = result.figures.get(f"vcpu_per_krps_{RATES[0]}")
            at_low = f" ({low:.3f} at {RATES[0]:,})" if low is not None else ""
            parts.append(f"{result.title} {value:.3f}{mark}{at_low}")
    if not parts:
        return []
    return [
        f"vCPU per 1,000 req/s, per proxy (fixed {RATES[-1]:,} req/s step): {'; '.join(parts)}  "
        f"(Istio publishes {ISTIO_VCPU_PER_KRPS:.2f} for its sidecar)"
    ]


def render_text(
    header: list[str],
    results: list[SetupResult],
    figures: tuple[Figure, ...] = FIGURES,
    references: tuple[str, ...] = REFERENCES,
    summary: list[str] | None = None,
) -> str:
    """Header, the aligned table, the summary lines, then the notes."""
    notes = footnotes(results, figures)
    text = [*header, "", align(rows(results, figures, references))]
    if summary:
        text += ["", *summary]
    if notes:
        text += ["", "* / failed / n/a:", *notes]
    return "\n".join(text)


def render_markdown(
    header: list[str],
    results: list[SetupResult],
    figures: tuple[Figure, ...] = FIGURES,
    references: tuple[str, ...] = REFERENCES,
    summary: list[str] | None = None,
) -> str:
    notes = footnotes(results, figures)
    table = markdown(rows(results, figures, references))
    text = ["# sidecar benchmark", "", *(f"- {line}" for line in header), "", table]
    if summary:
        text += ["", *summary]
    if notes:
        text += ["", "## Notes", "", "```", *notes, "```"]
    return "\n".join(text) + "\n"


def write_results(
    folder: Path,
    stamp: str,
    header: list[str],
    meta: dict[str, Any],
    results: list[SetupResult],
    figures: tuple[Figure, ...] = FIGURES,
    references: tuple[str, ...] = REFERENCES,
    prefix: str = "bench",
    summary: list[str] | None = None,
) -> Path:
    """bench/results/PREFIX-STAMP.{txt,md,json}; returns the markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{prefix}-{stamp}"
    base.with_suffix(".txt").write_text(render_text(header, results, figures, references, summary) + "\n")
    base.with_suffix(".md").write_text(render_markdown(header, results, figures, references, summary))
    document = {"meta": meta, "summary": summary or [], "setups": [asdict(result) for result in results]}
    base.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return base.with_suffix(".md")
