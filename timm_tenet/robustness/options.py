"""``validate.py``'s robustness options (corruptions, severities, attacks, radii) parsed and checked before any
model or data is loaded, and :class:`EvaluationError`, the one-line error of every evaluation step."""
from typing import Any, List, Optional, Sequence, Tuple

from .attacks import ATTACKS, parse_eps
from .c_datasets import SEVERITIES
from .corruptions import ALEXNET_ERRORS, CORRUPTIONS, EXTRA_CORRUPTIONS

__all__ = ['EvaluationError', 'parse_attacks', 'parse_corruptions', 'parse_eps_list', 'parse_severities', 'split_list']


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the one-line message says what to change."""


def split_list(values: Any) -> List[str]:
    """Items of a list flag given as ``a,b``, ``a b``, or (from YAML) a list or a scalar; empty for None."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    return [item.strip() for value in values for item in str(value).split(',') if item.strip()]


def parse_severities(values: Optional[Sequence[Any]]) -> Tuple[int, ...]:
    """Severities from ``--severities`` items (``'1,5'``, ``['1', '5']``, ``[1, 5]``); all five when empty."""
    items = split_list(values)
    if not items:
        return SEVERITIES
    severities = set()
    for item in items:
        try:
            severity = int(item)
        except ValueError:
            severity = None
        if severity not in SEVERITIES:
            raise EvaluationError(f"corruption severity must be an integer from 1 to 5, got '{item}'")
        severities.add(severity)
    return tuple(sorted(severities))


def parse_corruptions(values: Optional[Sequence[Any]]) -> Tuple[str, ...]:
    """Names for ``--corrupt``: ``'all'`` = the benchmark corruptions (:data:`CORRUPTIONS`, those mCE is defined
    on), ``'extra'`` = the paper's 4 others (:data:`EXTRA_CORRUPTIONS`), or names from either."""
    groups = {'all': CORRUPTIONS, 'extra': EXTRA_CORRUPTIONS}
    names: List[str] = []
    for name in split_list(values):
        if name in groups:
            names.extend(groups[name])
        elif name in CORRUPTIONS + EXTRA_CORRUPTIONS:
            names.append(name)
        else:
            released = f" ('{name}' exists only in the released -C sets: use --corruption-dir)" \
                if name in ALEXNET_ERRORS else ''
            raise EvaluationError(f"unknown corruption '{name}'{released}; choose all (the benchmark's "
                                  f"{', '.join(CORRUPTIONS)}), extra ({', '.join(EXTRA_CORRUPTIONS)}) or names of "
                                  f"either")
    return tuple(dict.fromkeys(names))


def parse_attacks(values: Optional[Sequence[Any]]) -> Tuple[str, ...]:
    """Attack names for ``--attack``, checked against :data:`timm_tenet.robustness.attacks.ATTACKS`; with
    ``autoattack``, fails now (not after the clean pass) when the optional package is missing."""
    names = tuple(dict.fromkeys(split_list(values)))
    for name in names:
        if name not in ATTACKS:
            raise EvaluationError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}")
    if 'autoattack' in names:
        import importlib.util
        if not any(importlib.util.find_spec(m) for m in ('pyautoattack', 'autoattack')):
            raise EvaluationError('--attack autoattack needs the optional AutoAttack package: run '
                                  '`pip install pyautoattack` (a PyPI packaging of github.com/fra31/auto-attack)')
    return names


def parse_eps_list(values: Sequence[Any], flag: str = '--eps') -> Tuple[float, ...]:
    """``--eps`` items as floats (``'8/255'`` accepted), one-line error for text that does not parse."""
    try:
        return tuple(parse_eps(v) for v in split_list(values))
    except ValueError as e:
        raise EvaluationError(f'{flag}: {e}') from None
