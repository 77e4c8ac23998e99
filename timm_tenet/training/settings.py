"""``train.py``'s flags turned into checked settings before anything is built: TENET or RSC, adversarial
training, the Hub push, mixed precision and the learning rate. Every problem is a one-line :class:`TrainingError`."""
import argparse
import dataclasses
import logging
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn as nn
from timm.utils import NativeScaler, is_primary

from ..config import RscConfig, TenetConfig
from ..models.tenet_models import get_tenet_config
from ..robustness.attacks import format_eps, parse_eps
from ..utils.cli import COMMAND_LINE_DESTS
from ..utils.errors import first_line
from .adversarial import ADV_METHODS, AdversarialConfig

__all__ = [
    'RSC_ARGS', 'TENET_ARGS', 'TrainingError', 'resolve_adversarial_config', 'resolve_amp', 'resolve_lr',
    'resolve_push_settings', 'resolve_rsc_config', 'resolve_tenet_config',
]

_logger = logging.getLogger('train')

# train.py flag dest -> TenetConfig field: --tenet-<field> sets <field>, as tenet_<field> model kwargs do
TENET_ARGS = {f'tenet_{name}': name for name in (
    'num_groups', 'stage', 'weight', 'orth_weight', 'warmup_steps', 'period', 'kmeans_iters')}
# train.py flag dest -> RscConfig field: --rsc-<field> sets <field>
RSC_ARGS = {f'rsc_{f.name}': f.name for f in dataclasses.fields(RscConfig)}


class TrainingError(RuntimeError):
    """A run that cannot start or go on as configured; the message says why."""


def resolve_tenet_config(args: argparse.Namespace, model: nn.Module) -> Optional[TenetConfig]:
    """The TENET settings of this run, or None for plain training.

    ``--tenet`` defaults to on for ``<arch>_tenet`` models and off otherwise. The settings start from
    the model's ``tenet_cfg`` (else the reference defaults) and every ``--tenet-*`` flag given
    overrides its field. ``args`` is updated with the values chosen, so ``args.yaml`` records them.
    A ``--tenet-*`` flag turns TENET on unless ``--no-tenet`` is given, which clears them all (a TENET
    recipe's baseline): no flag is parsed and ignored.
    """
    if _method_off(args, 'tenet', TENET_ARGS):
        return None
    if args.tenet is None:
        args.tenet = get_tenet_config(model) is not None or args.model.split('.')[0].endswith('_tenet')
    if not args.tenet:
        return None
    base = get_tenet_config(model) or TenetConfig()
    try:
        cfg = base.replace(**{field_: getattr(args, dest) for dest, field_ in TENET_ARGS.items()})
    except ValueError as e:
        raise TrainingError(f'invalid TENET setting: {e}') from None
    for dest, field_ in TENET_ARGS.items():
        setattr(args, dest, getattr(cfg, field_))
    return cfg


def _flag(dest: str) -> str:
    return '--' + dest.replace('_', '-')


def _method_off(args: argparse.Namespace, method: str, dests: Dict[str, str]) -> bool:
    """Whether ``--no-<method>`` switched the method off; then its settings are cleared, so that ``args.yaml``
    does not claim them (a method recipe's baseline: ``-c recipe.yaml --no-<method>``), but a flag of the
    method given on the command line with ``--no-<method>`` is an error (it would be ignored). Otherwise a
    flag of the method switches it on (``args.<method>`` left unset stays unset for the caller's default)."""
    if getattr(args, method) is False:
        typed = [_flag(dest) for dest in dests if dest in getattr(args, COMMAND_LINE_DESTS, ())]
        if typed:
            raise TrainingError(f"{', '.join(typed)} given with --no-{method}: drop "
                                f"{'it' if len(typed) == 1 else 'them'} or train with {method.upper()}")
        for dest in dests:
            setattr(args, dest, None)
        return True
    if any(getattr(args, dest) is not None for dest in dests):
        setattr(args, method, True)
    return False


def resolve_rsc_config(args: argparse.Namespace, tenet_cfg: Optional[TenetConfig] = None) -> Optional[RscConfig]:
    """The RSC settings of this run (``--rsc`` and ``--rsc-*``), or None without ``--rsc``.

    Every ``--rsc-*`` flag given overrides the reference default of its field; ``args`` is updated with the
    values chosen, so ``args.yaml`` records them. A ``--rsc-*`` flag turns RSC on unless ``--no-rsc`` is
    given, which clears them all, as ``--no-tenet`` does for TENET. RSC is refused while TENET is on
    (``tenet_cfg``).
    """
    if _method_off(args, 'rsc', RSC_ARGS) or not args.rsc:
        args.rsc = False
        return None
    if tenet_cfg is not None:
        raise TrainingError(f'--rsc and TENET are two methods, train one at a time: drop --rsc, or add --no-tenet '
                            f'({args.model} trains with TENET)')
    cfg = RscConfig()
    for dest, field_ in RSC_ARGS.items():
        value = getattr(args, dest)
        if value is not None:
            try:
                cfg = cfg.replace(**{field_: value})
            except ValueError as e:
                raise TrainingError(f'{_flag(dest)} {value}: {e}') from None
    for dest, field_ in RSC_ARGS.items():
        setattr(args, dest, getattr(cfg, field_))
    return cfg


def resolve_adversarial_config(args: argparse.Namespace) -> Optional[AdversarialConfig]:
    """The adversarial training settings of this run (``--adv-*``), or None without ``--adv-train``.

    Every ``--adv-*`` flag must apply to the chosen method (no flag is parsed and ignored). ``args`` is
    updated with the values used (PGD steps and step size, free step size and replays), so ``args.yaml``
    records them; ``--adv-eps`` keeps the text given (``8/255``), which ``-c args.yaml`` reads again.
    """
    method = args.adv_train or None
    given = {flag: getattr(args, dest) for flag, dest in (
        ('--adv-eps', 'adv_eps'), ('--adv-steps', 'adv_steps'), ('--adv-step-size', 'adv_step_size'),
        ('--adv-replays', 'adv_replays')) if getattr(args, dest) is not None}
    if method is None:
        if given:
            raise TrainingError(f"{', '.join(given)} given without --adv-train ({'|'.join(ADV_METHODS)})")
        return None
    if method not in ADV_METHODS:
        raise TrainingError(f"--adv-train must be one of {', '.join(ADV_METHODS)}, got '{method}'")
    if '--adv-eps' not in given:
        raise TrainingError(f'--adv-train {method} needs --adv-eps, the L-inf radius in pixels (e.g. 8/255)')
    applies = dict(fgsm=(), pgd=('--adv-steps', '--adv-step-size'), free=('--adv-step-size', '--adv-replays'))
    unused = [flag for flag in given if flag != '--adv-eps' and flag not in applies[method]]
    if unused:
        raise TrainingError(f"{', '.join(unused)} does not apply to --adv-train {method}")
    if method == 'free' and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        raise TrainingError('--adv-train free cannot be combined with mixup/cutmix: the replays of a batch must '
                            'train on the same images')
    values = dict(method=method)
    for flag, field_ in (('--adv-eps', 'eps'), ('--adv-step-size', 'step_size')):
        if flag in given:
            try:
                values[field_] = parse_eps(given[flag])
            except ValueError as e:
                raise TrainingError(f'{flag}: {e}') from None
    values.update({k: v for k, v in (('steps', args.adv_steps), ('replays', args.adv_replays)) if v is not None})
    try:
        cfg = AdversarialConfig(**values)
    except ValueError as e:
        raise TrainingError(f'invalid adversarial training setting: {e}') from None
    if method == 'pgd':
        args.adv_steps = cfg.steps
    if method in ('pgd', 'free'):
        args.adv_step_size = args.adv_step_size if args.adv_step_size is not None else format_eps(cfg.step_size)
    if method == 'free':
        args.adv_replays = cfg.replays
    return cfg


def resolve_push_settings(args: argparse.Namespace) -> None:
    """Check ``--push-to-hub`` before training (malformed id, offline mode, no token: one-line errors) and
    resolve ``--push-use-ema`` (default: the EMA weights when training with ``--model-ema``)."""
    if not args.push_to_hub:
        if args.push_private or args.push_use_ema is not None:
            raise TrainingError('--push-private and --push-use-ema need --push-to-hub NAMESPACE/NAME')
        return
    if args.push_use_ema is None:
        args.push_use_ema = bool(args.model_ema)
    elif args.push_use_ema and not args.model_ema:
        raise TrainingError('--push-use-ema needs --model-ema (there are no EMA weights to push)')
    from ..hub import ExportError, HubError, check_push_ready
    try:
        check_push_ready(args.push_to_hub)
    except (ExportError, HubError) as e:
        raise TrainingError(f'--push-to-hub: {first_line(e)}') from None


def resolve_amp(args: argparse.Namespace, device: torch.device) -> Tuple[Callable[[], ContextManager], Any]:
    if not args.amp:
        return nullcontext, None
    dtypes = dict(float16=torch.float16, bfloat16=torch.bfloat16)
    if args.amp_dtype not in dtypes:
        raise TrainingError(f"--amp-dtype must be one of {sorted(dtypes)}, got '{args.amp_dtype}'")
    amp_dtype = dtypes[args.amp_dtype]
    scaler = NativeScaler(device=device.type) if device.type == 'cuda' and amp_dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=amp_dtype), scaler


def resolve_lr(args: argparse.Namespace) -> None:
    if args.lr:
        return
    global_batch_size = args.batch_size * args.world_size * args.grad_accum_steps
    batch_ratio = global_batch_size / args.lr_base_size
    if not args.lr_base_scale:
        args.lr_base_scale = 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'
    if args.lr_base_scale == 'sqrt':
        batch_ratio = batch_ratio ** 0.5
    args.lr = args.lr_base * batch_ratio
    if is_primary(args):
        _logger.info(f'Learning rate ({args.lr}) calculated from base learning rate ({args.lr_base}) and effective '
                     f'global batch size ({global_batch_size}) with {args.lr_base_scale} scaling.')
