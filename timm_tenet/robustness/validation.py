"""``validate.py``'s run: clean accuracy, corruptions (on the fly or from a released -C folder) and
attacks for one model, wired from the validate command line to the evaluation library, with the
summary tables and the results file."""
import argparse
import logging
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.data import create_loader, resolve_data_config
from timm.utils import random_seed, setup_default_logging

from ..utils.checkpoint import CheckpointError
from ..utils.cli import ConfigError, warn_once_about_workers
from .args import parse_validate_args
from .attack_eval import evaluate_attacks
from .corruption_eval import corruption_variants, evaluate_corruption_dir, plan_corruption_dir
from .loading import UnreadableSkipped, check_classes, check_data_source, create_eval_dataset, create_eval_model, \
    fill_from_checkpoint_args, load_eval_checkpoint, load_valid_labels, wrap_for_eval
from .options import EvaluationError, parse_attacks, parse_corruptions, parse_eps_list, parse_severities, split_list
from .results import write_results
from .summaries import summarize_corruptions, summary_text
from .variants import evaluate_variants

__all__ = ['main', 'run_validation', 'summary_text']

_logger = logging.getLogger('validate')

_ACCURACY = ('top1', 'top1_err', 'top5', 'top5_err')


def _check_options(args) -> Dict[str, Any]:
    """Every robustness option parsed and checked before a model or dataset is touched."""
    options = dict(
        corruptions=parse_corruptions(args.corrupt),
        severities=parse_severities(args.severities),
        attacks=parse_attacks(args.attack),
    )
    options['eps'] = parse_eps_list(args.eps) if options['attacks'] else ()
    options['step_size'] = parse_eps_list([args.attack_step_size], '--attack-step-size')[0] \
        if args.attack_step_size else None
    if args.corruption_dir and options['corruptions']:
        raise EvaluationError('--corruption-dir and --corrupt are separate evaluations: run them one at a time')
    if args.corruptions and not args.corruption_dir:
        raise EvaluationError('--corruptions selects corruptions of --corruption-dir; for generated corruptions '
                              'use --corrupt NAME[,NAME...]')
    if args.severities and not (args.corruption_dir or options['corruptions']):
        raise EvaluationError('--severities needs --corruption-dir or --corrupt')
    if args.corrupt_released and not options['corruptions']:
        raise EvaluationError('--corrupt-released stores the --corrupt batches as the released files; pass '
                              '--corrupt NAME (released -C folders are read as they are)')
    if args.attack_steps < 1 or args.attack_restarts < 1:
        raise EvaluationError('--attack-steps and --attack-restarts must be at least 1')
    if args.attack_samples is not None and args.attack_samples < 1:
        raise EvaluationError('--attack-samples must be at least 1')
    if args.amp and args.amp_dtype not in ('float16', 'bfloat16'):
        raise EvaluationError(f"--amp-dtype must be float16 or bfloat16, got '{args.amp_dtype}'")
    has_data = bool(args.data_dir or args.data or args.dataset)
    if (options['corruptions'] or options['attacks']) and not has_data:
        raise EvaluationError('--corrupt and --attack evaluate the --data-dir / --dataset images: pass one')
    if not has_data and not args.corruption_dir:
        raise EvaluationError('nothing to evaluate: pass --data-dir DIR or --dataset NAME, and/or --corruption-dir')
    options['has_data'] = has_data
    if has_data:
        check_data_source(args.dataset, args.data_dir or args.data)
    options['c_format'], options['c_plan'] = plan_corruption_dir(
        args.corruption_dir, args.corruption_format, split_list(args.corruptions) or None,
        options['severities']) if args.corruption_dir else (None, [])
    return options


@dataclass
class _EvalModel:
    """The model as evaluated (normalisation inside, ``--valid-labels`` applied) and what the results report."""
    evaluated: nn.Module
    source: Optional[str]
    param_count: int
    data_config: Dict[str, Any]
    num_outputs: int
    class_names: Optional[List[str]] = None  # recorded by train.py, index order


def run_validation(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the evaluations ``args`` ask for; returns ``{'clean', 'corruptions', 'corruption_summary', 'attacks'}``
    (the sections that ran)."""
    options = _check_options(args)
    random_seed(args.seed)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model = _load_model(args, device)
    loader_args = _loader_args(args, model.data_config, device)
    run_args = dict(device=device, amp_autocast=_amp_autocast(args, device), channels_last=args.channels_last,
                    progress=args.progress, log_freq=args.log_freq)

    results: Dict[str, Any] = OrderedDict()
    loader = None
    if options['has_data']:
        loader = _create_loader(args, model, loader_args)
        results.update(_evaluate_clean_and_corrupted(args, options, model, loader, run_args))
    if options['c_plan']:
        results.update(_evaluate_released_c(args, options, model, loader_args, run_args, results.get('clean')))
    if options['attacks']:
        if args.amp:
            _logger.info('Attacks run in float32 (autocast off) for exact input gradients.')
        results['attacks'] = evaluate_attacks(
            model.evaluated, loader, options['attacks'], options['eps'], steps=args.attack_steps,
            step_size=options['step_size'], restarts=args.attack_restarts, seed=args.seed,
            samples=args.attack_samples, batch_size=args.batch_size, device=device, progress=args.progress)
    return results


def _load_model(args: argparse.Namespace, device: torch.device) -> _EvalModel:
    """The checkpoint (its recorded arguments fill the unset flags), the model on ``device`` (channels-last,
    compiled when asked) and its wrapper for [0, 1] inputs."""
    state_dict = source = names = None
    if args.checkpoint:
        source, state_dict, recorded, names = load_eval_checkpoint(args.checkpoint, args.use_ema)
        filled = fill_from_checkpoint_args(args, recorded)
        if filled:
            _logger.info(f'From {source}: ' + ', '.join(f'{k}={getattr(args, k)}' for k in filled))
    model = create_eval_model(
        args.model, pretrained=args.pretrained or not args.checkpoint, state_dict=state_dict, source=source,
        num_classes=args.num_classes, in_chans=args.in_chans or (args.input_size[0] if args.input_size else None),
        global_pool=args.gp, **args.model_kwargs)
    param_count = sum(p.numel() for p in model.parameters())
    _logger.info(f'Model {args.model} created, param count: {param_count}')
    data_config = resolve_data_config(vars(args), model=model, use_test_size=not args.use_train_size, verbose=True)

    num_classes = model.num_classes
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        torch._dynamo.reset()
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    valid_labels = load_valid_labels(args.valid_labels, num_classes) if args.valid_labels else None
    evaluated = wrap_for_eval(model, data_config['mean'], data_config['std'], valid_labels).eval()
    if valid_labels:  # the outputs are these classes of the model
        names = [names[i] for i in valid_labels] if names is not None else None
    return _EvalModel(evaluated, source, param_count, data_config,
                      len(valid_labels) if valid_labels else num_classes, names)


def _amp_autocast(args: argparse.Namespace, device: torch.device) -> Callable[[], ContextManager]:
    if not args.amp:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=getattr(torch, args.amp_dtype))


def _loader_args(args: argparse.Namespace, data_config: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """``create_loader`` arguments shared by the dataset and the -C loaders: [0, 1] images (the normalisation
    is inside the evaluated model)."""
    channels = data_config['input_size'][0]
    return dict(
        batch_size=args.batch_size, use_prefetcher=not args.no_prefetcher and device.type == 'cuda',
        interpolation=data_config['interpolation'], mean=(0.0,) * channels, std=(1.0,) * channels,
        num_workers=args.workers, crop_mode=data_config.get('crop_mode'), pin_memory=args.pin_mem, device=device)


def _create_loader(args: argparse.Namespace, model: _EvalModel, loader_args: Dict[str, Any]) -> Iterable:
    """The ``--data-dir`` / ``--dataset`` loader, refused when its labels would not mean the model's classes
    (:func:`~timm_tenet.robustness.loading.check_classes`); images that do not decode are left out, not replaced."""
    data_config = model.data_config
    dataset = create_eval_dataset(
        args.dataset, args.data_dir or args.data, split=args.split, class_map=args.class_map,
        download=args.dataset_download, num_samples=args.num_samples, input_key=args.input_key,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'),
        target_key=args.target_key, trust_remote_code=args.dataset_trust_remote_code, seed=args.seed)
    check_classes(getattr(getattr(dataset, 'reader', None), 'class_to_idx', None), model.num_outputs,
                  model.class_names, args.class_map)
    dataset = UnreadableSkipped.wrap(dataset)
    collate = dataset.collate(loader_args['use_prefetcher']) if isinstance(dataset, UnreadableSkipped) else None
    return create_loader(dataset, input_size=data_config['input_size'], crop_pct=data_config['crop_pct'],
                         collate_fn=collate, **loader_args)


def _evaluate_clean_and_corrupted(args: argparse.Namespace, options: Dict[str, Any], model: _EvalModel,
                                  loader: Iterable, run_args: Dict[str, Any]) -> Dict[str, Any]:
    """The clean pass and every ``--corrupt`` variant in one pass over ``loader``: the ``clean`` section and,
    with corruptions, the ``corruptions`` rows and their ``corruption_summary``."""
    data_config = model.data_config
    constants = args.corrupt_constants
    if constants == 'auto':
        constants = 'cifar' if max(data_config['input_size'][1:]) <= 64 else 'imagenet'
    variants = {'clean': None, **corruption_variants(
        options['corruptions'], options['severities'], constants, args.seed, run_args['device'],
        released=args.corrupt_released)}
    desc = 'clean' + (f' + {len(variants) - 1} corruption/severity pairs' if len(variants) > 1 else '')
    metrics = evaluate_variants(model.evaluated, loader, variants, desc=desc, **run_args)
    clean = metrics.pop('clean')
    sections: Dict[str, Any] = OrderedDict(clean=OrderedDict(
        model=args.model, split=args.split, **{k: clean[k] for k in _ACCURACY},
        param_count=round(model.param_count / 1e6, 2), img_size=data_config['input_size'][-1],
        crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation']))
    if model.source:
        sections['clean']['checkpoint'] = model.source
    skipped = UnreadableSkipped.count(loader.dataset)
    _logger.info(f" * Acc@1 {clean['top1']:.3f} ({clean['top1_err']:.3f}) "
                 f"Acc@5 {clean['top5']:.3f} ({clean['top5_err']:.3f}) on {clean['count']} images"
                 + (f' ({skipped} that failed to decode left out; their paths are above)' if skipped else ''))
    if options['corruptions']:
        rows = [OrderedDict(source='on-the-fly', corruption=name, severity=severity, **{k: m[k] for k in _ACCURACY})
                for (name, severity), m in metrics.items()]
        sections['corruptions'] = rows
        sections['corruption_summary'] = summarize_corruptions(rows, 'on-the-fly')
        sections['corruption_summary']['constants'] = constants
        sections['corruption_summary']['released'] = args.corrupt_released
    return sections


def _evaluate_released_c(args: argparse.Namespace, options: Dict[str, Any], model: _EvalModel,
                         loader_args: Dict[str, Any], run_args: Dict[str, Any],
                         clean: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``--corruption-dir`` set: its ``corruptions`` rows and ``corruption_summary`` (relative mCE when the
    clean pass ran)."""
    data_config = model.data_config

    def make_loader(c_dataset):
        # -C images are final-size: crop_pct 1.0 resizes only if the model's input size differs
        return create_loader(c_dataset, input_size=data_config['input_size'], crop_pct=1.0,
                             persistent_workers=False, **loader_args)

    rows = evaluate_corruption_dir(model.evaluated, args.corruption_dir, options['c_format'], options['c_plan'],
                                   make_loader, num_classes=model.num_outputs, **run_args)
    summary = summarize_corruptions(rows, options['c_format'], clean['top1'] if clean else None)
    return OrderedDict(corruptions=rows, corruption_summary=summary)


def main(argv: Optional[Sequence[str]] = None) -> int:
    if not logging.getLogger().handlers:
        setup_default_logging()
    warn_once_about_workers()
    try:
        args, _ = parse_validate_args(argv)
        results = run_validation(args)
    except (EvaluationError, CheckpointError, ConfigError) as e:
        _logger.error(str(e))
        return 1
    print(summary_text(results), flush=True)
    if args.results_file:
        write_results(args.results_file, results, fmt=args.results_format)
        _logger.info(f'Wrote {args.results_file} ({args.results_format}).')
    return 0


