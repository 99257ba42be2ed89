"""The coverage page: one self-contained HTML file (inline SVG and CSS, no script, no external asset).

People look before they read: per dataset, the archived ranges as green bands along the block axis,
gaps in amber and failed checks in red, each band with its range (and what is wrong) on hover;
then the problems and the skipped checks as tables.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from ..archive.storage import open_store
from .report import Problem, Report, sorted_problems
from .walk import verify

WIDTH = 1000  # px of the block axis
COLUMNS = ("dataset", "file", "blocks", "check", "what")
MAX_ROWS = 1000  # problems listed in the page's table (all of them are in verify --json)
COLOURS = {"archived": "#2e9e52", "gap": "#f0a020", "problem": "#d62728"}

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.ok { color: #2e9e52; font-weight: 600; } .bad { color: #d62728; font-weight: 600; }
.muted { color: #666; }
.band { display: flex; align-items: center; margin: 6px 0; }
.band .name { width: 110px; font-weight: 600; }
svg { display: block; overflow: visible; }
svg rect.data:hover { stroke: #000; stroke-width: 1.5; }
.legend span { display: inline-block; margin-right: 16px; }
.legend i { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; margin-right: 4px; }
table { border-collapse: collapse; margin-top: 6px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.file { font-family: ui-monospace, monospace; font-size: 12px; }
td.blocks { white-space: nowrap; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bands(items: list[tuple[int, int, str]], lo: int, hi: int) -> list[tuple[float, float, str]]:
    """(x, width, hover text) per band; ranges closer than a pixel are drawn as one band."""
    scale = WIDTH / max(1, hi - lo + 1)
    out: list[tuple[float, float, int, str, int, int]] = []  # x0, x1, count, first text, first block, last block
    for a, b, text in sorted(items):
        x0, x1 = (a - lo) * scale, max((b - lo + 1) * scale, (a - lo) * scale + 2)
        if out and x0 <= out[-1][1] + 0.5:
            p = out[-1]
            out[-1] = (p[0], max(p[1], x1), p[2] + 1, p[3], p[4], max(p[5], b))
        else:
            out.append((x0, x1, 1, text, a, b))
    result = []
    for x0, x1, count, text, a, b in out:
        label = text if count == 1 else f"blocks {a:,}–{b:,}: {count} ranges; the first: {text}"
        result.append((x0, x1 - x0, label))
    return result


def _rects(items: list[tuple[int, int, str]], lo: int, hi: int, colour: str, kind: str) -> str:
    return "".join(
        f'<rect class="data {kind}" x="{x:.2f}" y="0" width="{w:.2f}" height="22" fill="{colour}"><title>{_e(t)}</title></rect>'
        for x, w, t in _bands(items, lo, hi)
    )


def _range(a: int, b: int) -> str:
    return f"block {a:,}" if a == b else f"blocks {a:,}–{b:,}"


def _section(report: Report) -> str:
    problems = sorted_problems(report)
    spans = [r for runs in report.archived.values() for r in runs] + [
        span for p in problems for d in report.datasets if (span := _drawn(p, d))
    ]
    state = (
        '<span class="ok">whole</span>'
        if report.ok
        else f'<span class="bad">{len(problems):,} problem{"s" * (len(problems) != 1)}</span>'
    )
    what = (
        "every check"
        if report.checked
        else "coverage from the manifests only (no file read: run cryo-ingest verify for the checks)"
    )
    c = report.counts
    facts = (
        f"{c.get('files', 0):,} files, {c.get('rows', 0):,} rows, {c.get('blocks', 0):,} blocks read in {report.seconds:.1f} s; "
        f"receipts roots recomputed: {c.get('receipts_root_checked', 0):,}; logs blooms: {c.get('logs_bloom_checked', 0):,}"
        if report.checked
        else ""
    )
    out = [
        f"<h2>chain {report.chain_id} · {_e(report.root)}: {state}</h2>",
        f'<p class="muted">{_e(what)}. {_e(facts)}</p>',
    ]
    if not spans:
        out.append("<p>Nothing archived.</p>")
        return "".join(out)
    lo = report.first_block if report.first_block is not None else min(a for a, _ in spans)
    hi = report.last_block if report.last_block is not None else max(b for _, b in spans)
    for dataset in report.datasets:
        runs = [(a, b, f"{_range(a, b)}: archived") for a, b in report.archived.get(dataset, [])]
        mine = [(span, p) for p in problems if (span := _drawn(p, dataset))]
        gaps = [(a, b, f"{_range(a, b)}: {p.what}") for (a, b), p in mine if p.check in ("gap", "coverage")]
        bad = [(a, b, f"{_range(a, b)}: {p.check}: {p.what}") for (a, b), p in mine if p.check not in ("gap", "coverage")]
        svg = (
            f'<svg width="{WIDTH}" height="22" role="img" aria-label="{_e(dataset)} coverage">'
            f'<rect x="0" y="0" width="{WIDTH}" height="22" fill="#eee"/>'
            + _rects(runs, lo, hi, COLOURS["archived"], "archived")
            + _rects(gaps, lo, hi, COLOURS["gap"], "gap")
            + _rects(bad, lo, hi, COLOURS["problem"], "problem")
            + "</svg>"
        )
        out.append(f'<div class="band" data-dataset="{_e(dataset)}"><div class="name">{_e(dataset)}</div>{svg}</div>')
    ticks = "".join(
        f'<text x="{WIDTH * i / 4:.0f}" y="12" font-size="11" text-anchor="{("start", "middle", "middle", "middle", "end")[i]}">'
        f"{lo + (hi - lo) * i // 4:,}</text>"
        for i in range(5)
    )
    out.append(f'<div class="band"><div class="name muted">block</div><svg width="{WIDTH}" height="16">{ticks}</svg></div>')
    if problems:
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td class='{k}'>{_e(v)}</td>"
                for k, v in zip(COLUMNS, (p.dataset, p.file, p.blocks, p.check, p.what), strict=True)
            )
            + "</tr>"
            for p in problems[:MAX_ROWS]
        )
        more = (
            f"<p class='muted'>and {len(problems) - MAX_ROWS:,} more (verify --json lists them all)</p>"
            if len(problems) > MAX_ROWS
            else ""
        )
        out.append(
            "<h2>Problems</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>" + rows + "</table>" + more
        )
    if report.skipped:
        rows = "".join(
            f"<tr><td>{_e(s.check)}</td><td>{_e(_range(s.first_block, s.last_block))}</td><td>{_e(s.reason)}</td></tr>"
            for s in report.skipped[:MAX_ROWS]
        )
        out.append(
            "<h2>Checks that cannot apply</h2><table><tr><th>check</th><th>blocks</th><th>why</th></tr>" + rows + "</table>"
        )
    return "".join(out)


def render(reports: list[Report]) -> str:
    legend = "".join(f'<span><i style="background:{c}"></i>{k}</span>' for k, c in COLOURS.items())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>cryo-ingest coverage</title><style>{CSS}</style></head><body>"
        f'<h1>Archive coverage</h1><p class="muted">cryo-ingest, {when}. Hover a band for its range.</p>'
        f'<p class="legend">{legend}</p>' + "".join(_section(r) for r in reports) + "</body></html>\n"
    )


def write(path: Path, reports: list[Report]) -> None:
    path.write_text(render(reports), encoding="utf-8")


def write_from_manifests(path: Path, archives: list[tuple[str, int, tuple[str, ...]]]) -> None:
    """`status --html`: per (root, chain, datasets), coverage, gaps and orphans from manifests and listings, no file read."""
    write(path, [verify(open_store(root), chain_id, root, datasets, read_files=False) for root, chain_id, datasets in archives])


def _drawn(p: Problem, dataset: str) -> tuple[int, int] | None:
    """The blocks a problem colours on a dataset's band; orphans are listed, not drawn."""
    if p.first_block is None or p.last_block is None or p.check == "orphans" or dataset not in p.dataset.split("+"):
        return None
    return p.first_block, p.last_block
