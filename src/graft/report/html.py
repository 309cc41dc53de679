"""A single self-contained HTML page per run: opens offline, on a phone, and survives being emailed."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

from graft.io import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:60rem;margin:0 auto;
padding:1rem;color:#222;line-height:1.4}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}
pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;font-size:.85rem}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#555}
""".strip()


def _text(value: object) -> str:
    """Escaped text of one cell; None shows as an empty cell, not the word 'None'."""
    return "" if value is None else html.escape(str(value))


def _key_value_table(data: Mapping[object, object]) -> str:
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in data.items())
    return f'<div class="scroll"><table>{rows}</table></div>'


def _records_table(records: list[Mapping[object, object]]) -> str:
    """Columns are the union of the records' keys in first-seen order, so ragged records still line up."""
    columns: dict[object, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    head = "".join(f"<th>{_text(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_text(r.get(c))}</td>" for c in columns) + "</tr>" for r in records)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _content(content: object) -> str:
    """Dict → two-column table, list of dicts → table, multi-line str → <pre>, anything else → paragraph."""
    if isinstance(content, Mapping):
        return _key_value_table(content)
    if isinstance(content, list) and content and all(isinstance(r, Mapping) for r in content):
        return _records_table(content)
    if isinstance(content, str) and "\n" in content:
        return f"<pre>{_text(content)}</pre>"
    return f"<p>{_text(content)}</p>"


def _image(caption: str, path: Path) -> str:
    """Embed the PNG inline so the page has no side files to lose."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = _text(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def write_html_report(
    path: Path,
    *,
    title: str,
    summary: dict[str, object],
    sections: list[tuple[str, object]],
    images: list[tuple[str, Path]],
) -> Path:
    """Write a static HTML report (summary table, sections, embedded PNGs) atomically to `path`."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_text(title)}</h1>",
    ]
    if summary:
        parts.append(_key_value_table(summary))
    for heading, content in sections:
        parts.append(f"<h2>{_text(heading)}</h2>{_content(content)}")
    if images:
        parts.append("<h2>Figures</h2>")
        parts.extend(_image(caption, image_path) for caption, image_path in images)
    parts.append("</body></html>\n")
    return atomic_write_text(path, "\n".join(parts))
