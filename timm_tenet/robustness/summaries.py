"""Summaries of corruption results: mean corruption error, ImageNet-C mCE and relative mCE, the error matrix
by corruption and severity, and the tables ``validate.py`` prints."""
import logging
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .c_datasets import SEVERITIES
from .corruptions import ALEXNET_ERRORS, mce, mean_corruption_error, relative_mce
from .results import format_table

__all__ = ['corruption_matrix', 'summarize_corruptions', 'summary_text']

_logger = logging.getLogger(__name__)

_CLEAN_COLUMNS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                  'interpolation')


def summarize_corruptions(
        rows: Sequence[Mapping[str, Any]],
        source: str,
        clean_top1: Optional[float] = None,
) -> Dict[str, Any]:
    """Mean corruption error of ``rows`` and, for ImageNet-C, mCE and relative mCE (percent, AlexNet = 100).

    mCE uses the corruptions that have AlexNet references and all five severities; relative mCE also
    needs ``clean_top1``. Each missing ingredient leaves its field None and is logged.
    """
    errors: Dict[str, Dict[int, float]] = {}
    for row in rows:
        errors.setdefault(row['corruption'], {})[int(row['severity'])] = row['top1_err'] / 100.0
    severities = sorted({s for errs in errors.values() for s in errs})
    summary = OrderedDict(
        source=source, num_corruptions=len(errors), severities=','.join(map(str, severities)),
        mean_corruption_error=round(mean_corruption_error(
            {name: list(errs.values()) for name, errs in errors.items()}), 4) if errors else None)
    if source != 'imagenet-c':
        return summary
    full = {name: [errs[s] for s in SEVERITIES] for name, errs in errors.items()
            if name in ALEXNET_ERRORS and all(s in errs for s in SEVERITIES)}
    summary.update(mce=None, relative_mce=None, mce_corruptions=len(full))
    if not full:
        _logger.warning('mCE not computed: it needs all five severities of corruptions with AlexNet references')
        return summary
    if len(full) < len(ALEXNET_ERRORS):
        _logger.warning(f'mCE over {len(full)} of the {len(ALEXNET_ERRORS)} ImageNet-C corruptions: not comparable '
                        f'with published numbers')
    summary['mce'] = round(mce(full), 4)
    if clean_top1 is None:
        _logger.warning('relative mCE not computed: it needs the clean error (pass --data-dir with the clean '
                        'validation set)')
    else:
        summary['relative_mce'] = round(relative_mce(full, 1.0 - clean_top1 / 100.0), 4)
    return summary


def corruption_matrix(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows ``{'corruption', 1: err, ..., 5: err, 'mean': err}`` (top-1 error, percent) and a ``'mean'`` row."""
    severities = sorted({int(r['severity']) for r in rows})
    table: Dict[str, Dict[str, Any]] = OrderedDict()
    for row in rows:
        table.setdefault(row['corruption'], OrderedDict(corruption=row['corruption']))[str(row['severity'])] = \
            row['top1_err']
    out = []
    for entry in table.values():
        errs = [entry[str(s)] for s in severities if str(s) in entry]
        out.append(OrderedDict(entry, mean=sum(errs) / len(errs)))
    if out:
        mean_row = OrderedDict(corruption='mean')
        for column in [str(s) for s in severities] + ['mean']:
            column_values = [r[column] for r in out if column in r]
            mean_row[column] = sum(column_values) / len(column_values)
        out.append(mean_row)
    return out


def summary_text(results: Dict[str, Any]) -> str:
    """The tables printed at the end of a run."""
    parts = []
    if 'clean' in results:
        parts.append(format_table([results['clean']], _CLEAN_COLUMNS, title='Clean', floatfmt='.3f'))
    if results.get('corruptions'):
        summary = results['corruption_summary']
        matrix = corruption_matrix(results['corruptions'])
        parts.append(format_table(matrix, title=f"Top-1 error (%) by corruption and severity ({summary['source']})"))
        figures = [('mean corruption error', summary.get('mean_corruption_error')), ('mCE', summary.get('mce')),
                   ('relative mCE', summary.get('relative_mce'))]
        parts.append('  '.join(f'{name}: {value:.2f}' for name, value in figures if value is not None))
    if results.get('attacks'):
        parts.append(format_table(
            results['attacks'], ('attack', 'eps_text', 'steps', 'restarts', 'top1', 'top1_err', 'clean_top1', 'count'),
            headers=dict(eps_text='eps'), title='Accuracy under attack (%)'))
    return '\n\n'.join(parts)

