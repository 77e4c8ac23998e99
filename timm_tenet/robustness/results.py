"""Result rows: atomic JSON / CSV files and plain-text tables.

A result is one row (a dict of scalars), a list of rows, or a mapping of named sections, each a row
or a list of rows (``{'clean': {...}, 'corruptions': [...], 'attacks': [...]}``). JSON keeps that
structure; CSV flattens it to one row per line with a ``section`` column. Files are written atomically
(:func:`timm_tenet.utils.io.atomic_write_text`), so a reader never sees a half-written file and an interrupted
run leaves the previous one intact.
"""
import csv
import io
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..utils.io import atomic_write_text

__all__ = ['RESULT_FORMATS', 'Result', 'atomic_write_text', 'flatten_results', 'format_table', 'write_results']

RESULT_FORMATS = ('csv', 'json')

Row = Mapping[str, Any]
Result = Union[Row, Sequence[Row], Mapping[str, Union[Row, Sequence[Row]]]]


def _is_row(value: Any) -> bool:
    return isinstance(value, Mapping) and not any(isinstance(v, (Mapping, list, tuple)) for v in value.values())


def _is_sections(result: Result) -> bool:
    return isinstance(result, Mapping) and not _is_row(result)


def flatten_results(result: Result, section_key: str = 'section') -> List[Dict[str, Any]]:
    """Rows of ``result`` for a CSV file: a row stays one row, a list stays its rows, and a mapping of
    sections gives every row of every section with its section name under ``section_key``."""
    if _is_sections(result):
        rows = []
        for section, value in result.items():
            for row in ([value] if isinstance(value, Mapping) else value):
                rows.append({section_key: section, **row})
        return rows
    if isinstance(result, Mapping):
        return [dict(result)]
    return [dict(row) for row in result]


def _csv_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ','.join(str(v) for v in value)
    return '' if value is None else value


def _to_csv(rows: Sequence[Row]) -> str:
    fields: Dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return out.getvalue()


def write_results(path: str, result: Result, fmt: str = 'csv') -> None:
    """Write ``result`` atomically as JSON (structure kept) or CSV (:func:`flatten_results`).

    Args:
        path: Target file; its folder is created if needed.
        result: A row, a list of rows, or a mapping of sections.
        fmt: ``'csv'`` or ``'json'``.

    Examples:

        ```python
        write_results('results.json', {'clean': {'top1': 93.1}, 'attacks': [{'attack': 'fgsm', 'top1': 41.0}]},
                      fmt='json')
        ```
    """
    if fmt not in RESULT_FORMATS:
        raise ValueError(f"results format must be one of {', '.join(RESULT_FORMATS)}, got '{fmt}'.")
    if fmt == 'json':
        text = json.dumps(result, indent=4, allow_nan=True) + '\n'
    else:
        text = _to_csv(flatten_results(result))
    atomic_write_text(text, path)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else format(value, floatfmt)
    return str(value)


def format_table(
        rows: Sequence[Row],
        columns: Optional[Sequence[str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        title: Optional[str] = None,
        floatfmt: str = '.2f',
) -> str:
    """Plain-text table of ``rows``: numbers right-aligned, text left-aligned, missing values as ``-``.

    Args:
        rows: Dicts of scalars.
        columns: Keys to show, in order (default: every key, in first-seen order).
        headers: Display names of some columns (default: the key).
        title: A line printed above the table.
        floatfmt: Format spec of float cells.
    """
    if columns is None:
        seen: Dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    headers = headers or {}
    names = [headers.get(c, c) for c in columns]
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]

    def line(values):
        return '  '.join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(names), '  '.join('-' * w for w in widths)]
    out += [line(r) for r in cells]
    return '\n'.join(out)
