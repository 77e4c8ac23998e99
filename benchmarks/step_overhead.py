"""Cost of a TENET (and an RSC) training step against timm's ClassificationTask step on the same model and batch.

Rounds are timed interleaved (plain, TENET variants, plain, ...); in each round every variant runs
three consecutive steps (one full period of the period-3 variant, so its cost is amortised exactly as
in training) and each variant's time is divided by the plain time of the same round. The paired ratios
cancel the slow drift of a shared machine; their median over the rounds is reported, with the median
seconds per step. A step is zero_grad + forward + backward + SGD update. RSC runs every step (it has no
period) with every sample keeping its mask; its cost does not depend on the spatial/channel draw. ``--threads 1 --cpu-time``
measures the process's CPU time instead of wall time, which other processes disturb less (on a
virtual machine, CPU time still varies by several percent from step to step: use enough rounds).

Beside the times, each row gives the ATen ops of one call (a step: mean over one period), counted with
``torch.profiler`` as the top-level ATen calls (those not made by another ATen op: what Python and the
autograd engine dispatch) that are not views, i.e. roughly the kernels launched on a GPU.
``--ops-only`` counts without timing.

    python benchmarks/step_overhead.py --model resnet50 -b 16 --img-size 128
    python benchmarks/step_overhead.py --threads 1 --cpu-time          # on a busy machine
    python benchmarks/step_overhead.py --ops-only
    python benchmarks/step_overhead.py --methods rsc                   # the RSC rows only
"""
import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import timm
import torch
from timm.task import ClassificationTask
from torch.profiler import ProfilerActivity, profile

from timm_tenet import RscConfig, RscTask, TenetConfig, TenetTask
from timm_tenet.inhibition import group_channels, reversed_mask
from timm_tenet.split import ModelSplit
from timm_tenet.utils.env import versions

_STEPS_PER_SAMPLE = 3  # one period of the period-3 variant
_VIEW_OPS = {'aten::' + name for name in (
    'alias', 'as_strided', 'detach', 'expand', 'expand_as', 'flatten', 'narrow', 'permute', 'reshape', 'select',
    'slice', 'split', 'squeeze', 't', 'transpose', 'unbind', 'unflatten', 'unsqueeze', 'view', 'view_as',
    '_unsafe_view', '_reshape_alias')}


def aten_op_count(fn: Callable[[], None], calls: int = 1) -> float:
    """Top-level non-view ATen ops per call of ``fn`` (mean over ``calls`` consecutive calls)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    top_level = [
        e.name for e in prof.events()
        if e.name.startswith('aten::') and not (e.cpu_parent is not None and e.cpu_parent.name.startswith('aten::'))
    ]
    return sum(name not in _VIEW_OPS for name in top_level) / calls


def _timed(fn: Callable[[], None], device: torch.device, clock: Callable[[], float]) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = clock()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return clock() - start


def _step_fn(task, optimizer, x, y, amp_dtype):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = task(x, y)['loss']
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet50')
    parser.add_argument('-b', '--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument('--stage', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10, help='rounds (default: 10)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp-dtype', default=None, choices=[None, 'bfloat16', 'float16'])
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--cpu-time', action='store_true', help='time with process CPU time, not wall time')
    parser.add_argument('--ops-only', action='store_true', help='count ATen ops, do not time')
    parser.add_argument('--methods', default='tenet,rsc', help='comma-separated variants beside plain (default: tenet,rsc)')
    parser.add_argument('--results-file', default='')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter

    device = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else None
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=1000).to(device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    every = dict(warmup_steps=0, period=1, only_correct=False)  # inhibit every sample: worst case

    methods = set(args.methods.split(','))
    if not methods <= {'tenet', 'rsc'}:
        parser.error(f"--methods takes tenet and/or rsc, got '{args.methods}'")
    tasks = {'plain': ClassificationTask(model, verbose=False)}
    if 'tenet' in methods:
        tasks.update({
            f'tenet stage {args.stage}, every step': TenetTask(
                model, TenetConfig(stage=args.stage, **every), verbose=False),
            f'tenet stage {args.stage}, period 3': TenetTask(
                model, TenetConfig(stage=args.stage, warmup_steps=0, period=3, only_correct=False), verbose=False),
            'tenet stage -1, every step': TenetTask(model, TenetConfig(stage=-1, **every), verbose=False),
        })
    if 'rsc' in methods:
        tasks.update({
            f'rsc stage {args.stage}, every step': RscTask(
                model, RscConfig(stage=args.stage, batch_percent=1.0), verbose=False, seed=0),
            'rsc stage -1 (reference)': RscTask(model, RscConfig(stage=-1, batch_percent=1.0), verbose=False, seed=0),
        })
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    steps = {name: _step_fn(task.train(), optimizer, x, y, amp_dtype) for name, task in tasks.items()}

    with torch.no_grad():
        features = ModelSplit(model, args.stage).features(x).float()
    grads = torch.randn_like(features)

    def grouping():
        group_channels(features, 6)

    def mask_only():
        ids = group_channels(features, 6)
        reversed_mask(features, grads, ids, 6)

    # TENET's own maths, timed alone
    parts = {'grouping': grouping, 'grouping + mask': mask_only} if 'tenet' in methods else {}
    names = [*steps, *parts]
    for step in steps.values():  # warm-up
        step()
    ops = {name: aten_op_count(step, _STEPS_PER_SAMPLE) for name, step in steps.items()}
    ops.update({name: aten_op_count(part) for name, part in parts.items()})
    if args.ops_only:
        print(f"{args.model}, batch {args.batch_size}, {args.img_size}px, inhibited map {tuple(features.shape)}, "
              f"top-level non-view ATen ops per call")
        for name in names:
            print(f'{name:<32} {ops[name]:>8.0f}')
        return

    seconds: Dict[str, List[float]] = {name: [] for name in names}  # per step
    ratios: Dict[str, List[float]] = {name: [] for name in names}  # to the same round's plain step
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds[name].append(sum(_timed(step, device, clock) for _ in range(_STEPS_PER_SAMPLE)) / _STEPS_PER_SAMPLE)
        for name, part in parts.items():
            seconds[name].append(_timed(part, device, clock))
        for name in names:
            ratios[name].append(seconds[name][-1] / seconds['plain'][-1])

    results = {
        'model': args.model, 'batch_size': args.batch_size, 'img_size': args.img_size, 'device': str(device),
        'threads': torch.get_num_threads(), 'clock': 'cpu' if args.cpu_time else 'wall', 'amp_dtype': args.amp_dtype,
        'feature_shape': list(features.shape), 'rounds': args.repeats,
        'rows': [
            {'what': name, 'median_s': round(statistics.median(seconds[name]), 4),
             'x_plain': round(statistics.median(ratios[name]), 3),
             'x_plain_quartiles': [round(q, 3) for q in statistics.quantiles(ratios[name], n=4)[::2]],
             'aten_ops': ops[name]}
            for name in names
        ],
    }
    print(f"{args.model}, batch {args.batch_size}, {args.img_size}px, {device}, {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, inhibited map {tuple(features.shape)}; {versions()}")
    print(f"{'what':<32} {'median s':>9} {'x plain step':>13} {'quartiles':>15} {'ATen ops':>9}")
    for row in results['rows']:
        low, high = row['x_plain_quartiles']
        print(f"{row['what']:<32} {row['median_s']:>9.4f} {row['x_plain']:>13.3f} {low:>7.3f}-{high:.3f} "
              f"{row['aten_ops']:>9.0f}")
    if args.results_file:
        with open(args.results_file, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
