"""``validate.py``'s run: clean accuracy, corruptions (on the fly or from a released -C folder) and
attacks for one model, wired from the validate command line to the evaluation library, with the
summary tables and the results file."""
import logging
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, Optional, Sequence

import torch
from timm.data import create_loader, resolve_data_config
from timm.utils import random_seed, setup_default_logging

from ..utils.checkpoint import CheckpointError
from .evaluate import EvaluationError, corruption_matrix, corruption_variants, create_eval_dataset, \
    create_eval_model, evaluate_attacks, evaluate_corruption_dir, evaluate_variants, fill_from_checkpoint_args, \
    load_eval_checkpoint, load_valid_labels, parse_attacks, parse_corruptions, parse_eps_list, parse_severities, \
    plan_corruption_dir, split_list, summarize_corruptions, wrap_for_eval
from .results import format_table, write_results
from ..training.args import ConfigError
from .args import parse_validate_args

__all__ = ['main', 'summary_text', 'validate']

_logger = logging.getLogger('validate')

_CLEAN_COLUMNS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct',
                  'interpolation')


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
    options['c_format'], options['c_plan'] = plan_corruption_dir(
        args.corruption_dir, args.corruption_format, split_list(args.corruptions) or None,
        options['severities']) if args.corruption_dir else (None, [])
    return options


def validate(args) -> Dict[str, Any]:
    """Run the evaluations ``args`` ask for; returns ``{'clean', 'corruptions', 'corruption_summary', 'attacks'}``
    (the sections that ran)."""
    options = _check_options(args)
    random_seed(args.seed)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))

    state_dict = source = None
    if args.checkpoint:
        source, state_dict, recorded = load_eval_checkpoint(args.checkpoint, args.use_ema)
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
    num_outputs = len(valid_labels) if valid_labels else num_classes

    amp_autocast = partial(torch.autocast, device_type=device.type, dtype=getattr(torch, args.amp_dtype)) \
        if args.amp else nullcontext
    channels = data_config['input_size'][0]
    loader_args = dict(  # [0, 1] images: the normalisation is inside `evaluated`
        batch_size=args.batch_size, use_prefetcher=not args.no_prefetcher and device.type == 'cuda',
        interpolation=data_config['interpolation'], mean=(0.0,) * channels, std=(1.0,) * channels,
        num_workers=args.workers, crop_mode=data_config.get('crop_mode'), pin_memory=args.pin_mem, device=device)
    run_args = dict(device=device, amp_autocast=amp_autocast, channels_last=args.channels_last,
                    progress=args.progress, log_freq=args.log_freq)

    results: Dict[str, Any] = OrderedDict()
    loader = None
    if options['has_data']:
        dataset = create_eval_dataset(
            args.dataset, args.data_dir or args.data, split=args.split, class_map=args.class_map,
            download=args.dataset_download, num_samples=args.num_samples, input_key=args.input_key,
            input_img_mode=args.input_img_mode or ('RGB' if channels == 3 else 'L'), target_key=args.target_key,
            trust_remote_code=args.dataset_trust_remote_code, seed=args.seed)
        class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
        if class_to_idx and len(class_to_idx) > num_outputs:
            raise EvaluationError(f'the dataset has {len(class_to_idx)} classes but the model predicts {num_outputs}; '
                                  f'pass the matching --num-classes / --checkpoint')
        loader = create_loader(dataset, input_size=data_config['input_size'], crop_pct=data_config['crop_pct'],
                               **loader_args)
        constants = args.corrupt_constants
        if constants == 'auto':
            constants = 'cifar' if max(data_config['input_size'][1:]) <= 64 else 'imagenet'
        variants = {'clean': None, **corruption_variants(
            options['corruptions'], options['severities'], constants, args.seed, device)}
        desc = 'clean' + (f' + {len(variants) - 1} corruption/severity pairs' if len(variants) > 1 else '')
        metrics = evaluate_variants(evaluated, loader, variants, desc=desc, **run_args)
        clean = metrics.pop('clean')
        results['clean'] = OrderedDict(
            model=args.model, **{k: clean[k] for k in ('top1', 'top1_err', 'top5', 'top5_err')},
            param_count=round(param_count / 1e6, 2), img_size=data_config['input_size'][-1],
            crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation'])
        if source:
            results['clean']['checkpoint'] = source
        _logger.info(f" * Acc@1 {clean['top1']:.3f} ({clean['top1_err']:.3f}) "
                     f"Acc@5 {clean['top5']:.3f} ({clean['top5_err']:.3f}) on {clean['count']} images")
        if options['corruptions']:
            rows = [OrderedDict(source='on-the-fly', corruption=name, severity=severity,
                                **{k: m[k] for k in ('top1', 'top1_err', 'top5', 'top5_err')})
                    for (name, severity), m in metrics.items()]
            results['corruptions'] = rows
            results['corruption_summary'] = summarize_corruptions(rows, 'on-the-fly')
            results['corruption_summary']['constants'] = constants

    if options['c_plan']:
        def make_loader(c_dataset):
            # -C images are final-size: crop_pct 1.0 resizes only if the model's input size differs
            return create_loader(c_dataset, input_size=data_config['input_size'], crop_pct=1.0,
                                 persistent_workers=False, **loader_args)

        rows = evaluate_corruption_dir(evaluated, args.corruption_dir, options['c_format'], options['c_plan'],
                                       make_loader, num_classes=num_outputs, **run_args)
        results['corruptions'] = rows
        clean_top1 = results['clean']['top1'] if 'clean' in results else None
        results['corruption_summary'] = summarize_corruptions(rows, options['c_format'], clean_top1)

    if options['attacks']:
        if args.amp:
            _logger.info('Attacks run in float32 (autocast off) for exact input gradients.')
        results['attacks'] = evaluate_attacks(
            evaluated, loader, options['attacks'], options['eps'], steps=args.attack_steps,
            step_size=options['step_size'], restarts=args.attack_restarts, seed=args.seed,
            samples=args.attack_samples, batch_size=args.batch_size, device=device,
            progress=args.progress)
    return results


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    if not logging.getLogger().handlers:
        setup_default_logging()
    try:
        args, _ = parse_validate_args(argv)
        results = validate(args)
    except (EvaluationError, CheckpointError, ConfigError) as e:
        _logger.error(str(e))
        return 1
    print(summary_text(results), flush=True)
    if args.results_file:
        write_results(args.results_file, results, fmt=args.results_format)
        _logger.info(f'Wrote {args.results_file} ({args.results_format}).')
    return 0


