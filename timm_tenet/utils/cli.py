"""Command-line plumbing shared by ``train.py`` and ``validate.py``, as timm's scripts do it: ``-c FILE.yaml`` sets
the parser's defaults (every key must be a known dest or long flag, so a misspelt key is an error, not a silently
kept default), numbers starting with ``-`` are values, and the parsed arguments go back to YAML (``args.yaml``)."""
import argparse
import difflib
import os
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ['COMMAND_LINE_DESTS', 'ConfigError', 'args_to_dict', 'args_to_yaml', 'config_dests', 'load_config_defaults',
           'parse_args_with_config', 'parser_with_config', 'warn_once_about_workers']

# attribute of a parsed namespace: the dests set on the command line itself (not by -c or defaults)
COMMAND_LINE_DESTS = '_command_line_dests'


class ConfigError(ValueError):
    """A ``-c/--config`` file that cannot be used (unreadable, not a mapping, or an unknown key)."""


def parser_with_config(description: str) -> argparse.ArgumentParser:
    """A script's parser with timm's ``-c/--config FILE`` flag (read by :func:`parse_args_with_config`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file of {argument dest: value} defaults (the command line overrides them)')
    return parser


def config_dests(parser: argparse.ArgumentParser) -> List[str]:
    """The keys a config file may set: every dest of ``parser`` (``config`` itself is read and ignored)."""
    return [a.dest for a in parser._actions if a.dest not in (argparse.SUPPRESS, 'help')]


def _config_keys(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Config key -> dest: every dest, and every long flag spelled with underscores, so that a file written
    before a flag was renamed (``tenet_groups`` for ``--tenet-num-groups``) still sets it."""
    keys = {dest: dest for dest in config_dests(parser)}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith('--'):
                keys.setdefault(option[2:].replace('-', '_'), action.dest)
    return keys


def load_config_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Read a YAML file of ``{argparse dest: value}`` and make its values the parser's defaults.

    Values are then overridden by anything given on the command line, as with timm's ``-c``. Unlike
    timm, every key must be a dest of ``parser`` (or a long flag's name with underscores): an unknown key
    is a :class:`ConfigError` that names it (and the closest known key), so a misspelt key cannot silently
    leave a default in place.

    Args:
        parser: The parser whose defaults are set.
        path: YAML file; empty files set nothing.

    Returns:
        The mapping read from the file.

    Examples:

        ```python
        parser = build_train_parser()
        load_config_defaults(parser, 'hparams/digits_resnet18_tenet.yaml')
        args = parser.parse_args(['--epochs', '2'])
        ```
    """
    try:
        with open(path, 'r') as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from None
    except yaml.YAMLError as e:
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark is not None else ''
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of argument names to values, "
                          f'got {type(config).__name__}')
    known = _config_keys(parser)
    for key in config:
        if key not in known:
            suggestion = str(key).replace('-', '_').lstrip('_')
            close = [suggestion] if suggestion in known else difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ''
            raise ConfigError(f"unknown key '{key}' in config file '{path}'{hint} "
                              f'(keys are argument dests, e.g. batch_size for --batch-size)')
    config.pop('config', None)  # an args.yaml written by train.py names the file it came from
    parser.set_defaults(**{known[k]: v for k, v in config.items()})
    return config


# argparse reads '-8/255' as an unknown option ("expected one argument" and the usage); numbers and fractions
# starting with '-' are values, so that the eps flags can refuse them with their own one-line message
_NEGATIVE_VALUE = re.compile(r'^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(\s*/\s*\d*\.?\d+)?$')


def parse_args_with_config(
        parser: argparse.ArgumentParser,
        argv: Optional[Sequence[str]] = None,
) -> Tuple[argparse.Namespace, str]:
    """Two-stage parse as timm's scripts: ``-c FILE`` sets defaults, the rest of ``argv`` overrides them.

    Returns:
        The parsed namespace and its YAML text (for ``args.yaml``).
    """
    parser._negative_number_matcher = _NEGATIVE_VALUE  # private, but read by every Python 3 argparse
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str)
    config_args, _ = config_parser.parse_known_args(argv)
    if config_args.config:
        load_config_defaults(parser, config_args.config)
    args = parser.parse_args(argv)
    setattr(args, COMMAND_LINE_DESTS, _command_line_dests(parser, argv))
    return args, args_to_yaml(args)


def _command_line_dests(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> frozenset:
    """The dests that ``argv`` itself sets (not ``-c`` or the parser defaults): parsed again with every
    default suppressed."""
    saved = [action.default for action in parser._actions], dict(parser._defaults)
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in zip(parser._actions, saved[0]):
            action.default = default
        parser._defaults.update(saved[1])
    return frozenset(vars(given)) - {'config'}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def args_to_dict(args: argparse.Namespace, keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``args`` (only ``keys`` when given; never the private ``_``-prefixed ones) as plain YAML/
    ``weights_only``-safe values: tuples become lists, other objects strings."""
    values = {k: v for k, v in vars(args).items() if not k.startswith('_')}
    return {k: _plain(values[k]) for k in (keys if keys is not None else values) if k in values}


def args_to_yaml(args: argparse.Namespace, keys: Optional[Sequence[str]] = None) -> str:
    """YAML text of :func:`args_to_dict`, loadable again with ``-c``."""
    return yaml.safe_dump(args_to_dict(args, keys), default_flow_style=False)


def warn_once_about_workers() -> None:
    """torch warns that ``-j`` exceeds the cores where a loader is created and again where it is iterated, for
    every loader: show that warning once per process."""
    warnings.filterwarnings('once', message=r'This DataLoader will create \d+ worker processes', category=UserWarning)
