"""One TENET step as GPU users run it, checked in every precision, then the two speed benchmarks on CUDA.

For ``resnet50_tenet`` (stage 3), the same weights and batch go through one training step in float32,
TF32 (``allow_tf32``), bfloat16 autocast and float16 autocast with ``GradScaler``; the forward and
backward of each step run under ``torch.cuda.set_sync_debug_mode('error')``, so any device-to-host read
in them (``item``, ``bincount``, ``nonzero`` ...) stops the check. For each precision it reports:

* ``ids == f32 (same A)``: the grouping of the float32 step's feature map, run again inside that
  precision's context (autocast, TF32) with the same seed, equals the float32 ids (must be 100%);
* ``ids == f32 (step)``: the share of channels whose group id equals float32's in the step itself
  (the feature map differs in float16/bfloat16, so a few channels may move);
* ``mask |diff|``: the largest difference between the step's mask and the float32 mask (a channel that
  moves to another group changes the maps of two groups, so this is large whenever the step's ids differ);
* ``loss`` and whether it is finite, and whether GradScaler skipped the step.

Then ``step_overhead.py`` and ``train_throughput.py`` run on CUDA (float32/TF32 and bfloat16) and a
table of their figures is printed. About 5-8 minutes on one recent GPU.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --device cpu --model resnet18_tenet --img-size 64 --no-benchmarks  # logic only
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from typing import Dict, Iterator, List, Optional

import torch

import timm_tenet.task as task_module
from timm_tenet import TenetTask, create_tenet_model, get_tenet_config
from timm_tenet.inhibition import group_channels

_HERE = os.path.dirname(os.path.abspath(__file__))
_PRECISIONS = ('float32', 'tf32', 'bfloat16', 'float16')


@contextmanager
def _precision(name: str, device: torch.device) -> Iterator[None]:
    """TF32 matmuls/convolutions on for ``tf32`` only; autocast for the half precisions."""
    cuda = device.type == 'cuda'
    if cuda:
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == 'tf32'
    dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}.get(name)
    try:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def _no_host_reads(device: torch.device) -> Iterator[None]:
    if device.type != 'cuda':
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode('default')


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, device: torch.device) -> Dict:
    """One TENET training step; returns the inputs and output of the mask and the loss."""
    cfg = get_tenet_config(model).replace(warmup_steps=0, period=1)
    task = TenetTask(model, cfg, verbose=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=name == 'float16')
    seen = {}
    reversed_mask = task_module.reversed_mask

    def capture(maps, grads, group_ids, num_groups):
        seen.update(maps=maps.detach(), group_ids=group_ids, mask=reversed_mask(maps, grads, group_ids, num_groups))
        return seen['mask']

    task_module.reversed_mask = capture
    try:
        torch.manual_seed(0)
        with _no_host_reads(device):
            with _precision(name, device):
                loss = task(x, y)['loss']
            scaler.scale(loss).backward()
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)  # GradScaler reads found-inf back by design: outside the check
        scaler.update()
    finally:
        task_module.reversed_mask = reversed_mask
    skipped = scaler.is_enabled() and scaler.get_scale() < scale_before
    return dict(seen, loss=float(loss.detach()), skipped=skipped)


def check_precisions(args, device: torch.device) -> List[Dict]:
    torch.manual_seed(0)
    base = create_tenet_model(args.model, num_classes=1000).to(device)
    state = copy.deepcopy(base.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch_size,), generator=gen).to(device)
    _step(base, x, y, 'float32', device)  # warm-up: lazy initialisation and autotuning outside the checks
    names = [n for n in _PRECISIONS if device.type == 'cuda' or n != 'tf32']
    steps = {}
    for name in names:
        base.load_state_dict(state)
        steps[name] = _step(base, x, y, name, device)
    reference = steps['float32']
    num_groups = get_tenet_config(base).num_groups
    rows = []
    for name in names:
        step = steps[name]
        with _precision(name, device):
            regrouped = group_channels(reference['maps'], num_groups, generator=_generator(device))
        again = group_channels(reference['maps'], num_groups, generator=_generator(device))
        rows.append(dict(
            precision=name,
            ids_same_features=float((regrouped == again).float().mean()),
            ids_step=float((step['group_ids'] == reference['group_ids']).float().mean()),
            mask_max_diff=float((step['mask'] - reference['mask']).abs().max()),
            mask_dtype=str(step['mask'].dtype).replace('torch.', ''),
            loss=step['loss'],
            skipped=step['skipped'],
        ))
    return rows


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device).manual_seed(1)


def _benchmark(script: str, extra: List[str]) -> Optional[Dict]:
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, 'results.json')
        command = [sys.executable, os.path.join(_HERE, script), '--device', 'cuda', '--results-file', results, *extra]
        print('$', ' '.join(command[1:]), flush=True)
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f'{script} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}')
            return None
        with open(results) as f:
            return json.load(f)


def run_benchmarks() -> List[str]:
    lines = []
    for amp in (None, 'bfloat16'):
        extra = ['-b', '64', '--img-size', '224', '--repeats', '10'] + (['--amp-dtype', amp] if amp else [])
        results = _benchmark('step_overhead.py', extra)
        for row in (results or {}).get('rows', []):
            lines.append(f"step_overhead {amp or 'float32'}: {row['what']:<30} {row['median_s'] * 1000:8.1f} ms "
                         f"{row['x_plain']:6.3f}x plain  {row['aten_ops']:6.0f} ATen ops")
    for amp in (False, True):
        results = _benchmark('train_throughput.py', ['--amp'] if amp else [])
        if results:
            lines.append(f"train_throughput {'bfloat16' if amp else 'float32'}: TENET {results['tenet_img_per_s']:.1f} "
                         f"vs --no-tenet {results['no-tenet_img_per_s']:.1f} img/s = {results['ratio_img_per_s']:.3f}x")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet50_tenet')
    parser.add_argument('-b', '--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--no-benchmarks', action='store_true', help='precision checks only')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('gpu_check.py needs a CUDA device and torch.cuda.is_available() is False; to run the precision '
              'checks on CPU (no TF32, no sync check): --device cpu --model resnet18_tenet --img-size 64 '
              '--no-benchmarks')
        return 1
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == "cuda" else "CPU"}, '
          f'{args.model}, batch {args.batch_size}, {args.img_size} px')
    rows = check_precisions(args, device)
    print(f"{'precision':<10} {'ids == f32 (same A)':>20} {'ids == f32 (step)':>18} {'mask |diff|':>12} "
          f"{'mask dtype':>10} {'loss':>9} {'scaler skipped':>15}")
    for row in rows:
        print(f"{row['precision']:<10} {row['ids_same_features']:>20.1%} {row['ids_step']:>18.1%} "
              f"{row['mask_max_diff']:>12.2e} {row['mask_dtype']:>10} {row['loss']:>9.4f} {str(row['skipped']):>15}")
    failed = [row['precision'] for row in rows if row['ids_same_features'] < 1 or row['mask_dtype'] != 'float32'
              or not torch.isfinite(torch.tensor(row['loss'])) or row['skipped']]
    if device.type == 'cuda' and not args.no_benchmarks:
        for line in run_benchmarks():
            print(line)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    checked = 'no host reads in the steps, ' if device.type == 'cuda' else ''
    print(f'OK: {checked}float32 masks, finite losses, the same grouping of the same map under every precision')
    return 0


if __name__ == '__main__':
    sys.exit(main())
