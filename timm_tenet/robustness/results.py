"""Result rows: atomic JSON / CSV files and plain-text tables.

A result is one row (a dict of scalars), a list of rows, or a mapping of named sections, each a row
or a list of rows (``{'clean': {...}, 'corruptions': [...], 'attacks': [...]}``). JSON keeps that
structure; CSV flattens it to one row per line with a ``section`` column. Files are written atomically
(:func:`timm_tenet.utils.io.atomic_write_text`), so a reader never sees a half-written file and an interrupted
run leaves the previous one intact. :func:`read_results` reads such files (or any JSON / CSV of result rows)
back, for the model card.
"""
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from ..utils.errors import first_line
from ..utils.io import atomic_write_text

__all__ = [
    'RESULT_FORMATS', 'Result', 'ResultsError', 'flatten_results', 'format_table',
    'read_results', 'write_results',
]

RESULT_FORMATS = ('csv', 'json')

Row = Mapping[str, Any]
Result = Union[Row, Sequence[Row], Mapping[str, Union[Row, Sequence[Row]]]]


class ResultsError(ValueError):
    """A results file that cannot be read as result rows; the one-line message names it."""


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



def _is_value(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) <= 4 and all(isinstance(x, (str, int, float, bool)) or x is None for x in v)
    return isinstance(v, (str, int, float, bool)) or v is None


def _json_rows(obj: Any) -> Iterator[Dict[str, Any]]:
    """Every dict of plain values in a JSON document, nested lists and dicts included, outer first."""
    if isinstance(obj, list):
        for item in obj:
            yield from _json_rows(item)
    elif isinstance(obj, dict):
        row = {str(k): v for k, v in obj.items() if _is_value(v) and v is not None}
        if row:
            yield row
        for v in obj.values():
            if not _is_value(v):
                yield from _json_rows(v)


def _parse_csv_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _csv_rows(text: str) -> List[Dict[str, Any]]:
    return [
        {k.strip(): _parse_csv_value(v.strip()) for k, v in row.items() if k and v is not None and v.strip() != ''}
        for row in csv.DictReader(io.StringIO(text))
    ]


def read_results(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The result rows of a ``validate.py`` results file: JSON (a dict, a list of dicts, or nested) or CSV.

    Raises:
        ResultsError: The file is missing, unreadable, or holds no rows (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file not found: '{path}'")
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read results file '{path}' ({first_line(e)})") from None
    suffix = path.suffix.lower()
    rows: List[Dict[str, Any]] = []
    if suffix != '.csv':
        try:
            rows = list(_json_rows(json.loads(text)))
        except json.JSONDecodeError as e:
            if suffix == '.json':
                raise ResultsError(f"results file '{path}' is not valid JSON ({first_line(e)})") from None
    if not rows and suffix != '.json':
        try:
            rows = _csv_rows(text)
        except csv.Error as e:
            raise ResultsError(f"results file '{path}' is neither JSON nor CSV ({first_line(e)})") from None
    rows = [r for r in rows if r]
    if not rows:
        raise ResultsError(f"results file '{path}' holds no results")
    return rows
