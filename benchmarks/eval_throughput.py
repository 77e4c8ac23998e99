"""Speed of validate.py's evaluation: clean images/s against a plain loop over timm's loader, and the cost of
corrupting a batch on the fly against the model's forward on the same batch.

1. Clean throughput. The plain loop is timm's validate.py loop: ``create_loader`` with the model's mean/std,
   forward, ``timm.utils.accuracy`` and ``AverageMeter`` per batch. The evaluated loop is
   ``timm_tenet.robustness.variants.evaluate_clean``: the same loader with mean 0 / std 1 ([0, 1] images), the model
   wrapped with its normalisation, hits counted on the device. Passes are interleaved (plain, ours, plain,
   ...) so that machine noise hits both alike; medians are reported. Target: ratio >= 0.95.
2. Corruption cost. Each of the 19 on-the-fly corruptions (the benchmark's 15 and the 4 extra) against one
   forward of the model on the same batch. Every severity is timed once to find the most expensive one;
   that severity is then timed ``--repeats`` times, each time right after a forward, and the median of
   these paired ratios is reported (a busy machine slows both alike). CIFAR constants up to 64 px, ImageNet
   constants above. ``--cpu-time`` times the process's CPU time instead of the wall clock. Target: ratio
   <= 0.5 for every corruption, resnet18 at 32 px and resnet50 at 224 px, on CPU.

    python benchmarks/eval_throughput.py                       # resnet18, 32x32, CPU
    python benchmarks/eval_throughput.py --skip-clean --model resnet50 --img-size 224 -b 16
    python benchmarks/eval_throughput.py --device cuda --img-size 224 --num-images 4096 -b 256 -j 8
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.utils import AverageMeter, accuracy

from timm_tenet.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from timm_tenet.robustness.loading import wrap_for_eval
from timm_tenet.robustness.variants import evaluate_clean
from timm_tenet.robustness.results import format_table, write_results


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def _image_folder(root: str, num_images: int, size: int, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = os.path.join(root, str(i % num_classes))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f'{i}.png'))


def clean_throughput(args, model: torch.nn.Module, device: torch.device) -> Dict[str, float]:
    data_config = resolve_data_config({'img_size': args.img_size, 'crop_pct': 1.0}, model=model)
    with tempfile.TemporaryDirectory() as root:
        if args.data_dir:
            root = args.data_dir
        else:
            _image_folder(root, args.num_images, args.img_size, args.num_classes)
        dataset = create_dataset('', root=root, split='validation', is_training=False)
        common = dict(input_size=data_config['input_size'], batch_size=args.batch_size,
                      use_prefetcher=device.type == 'cuda', interpolation=data_config['interpolation'],
                      num_workers=args.workers, crop_pct=data_config['crop_pct'], device=device)
        plain_loader = create_loader(dataset, mean=data_config['mean'], std=data_config['std'], **common)
        eval_loader = create_loader(dataset, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **common)
        wrapped = wrap_for_eval(model, data_config['mean'], data_config['std']).eval()

        def plain():
            top1, top5 = AverageMeter(), AverageMeter()
            with torch.inference_mode():
                for x, y in plain_loader:
                    x, y = x.to(device), y.to(device)
                    output = model(x)
                    acc1, acc5 = accuracy(output, y, topk=(1, 5))
                    top1.update(acc1.item(), x.shape[0])
                    top5.update(acc5.item(), x.shape[0])

        def ours():
            evaluate_clean(wrapped, eval_loader, device=device, progress=False)

        times: Dict[str, List[float]] = {'plain': [], 'ours': []}
        _timed(plain, device), _timed(ours, device)  # warm-up: workers, allocator, kernels
        for _ in range(args.repeats):
            times['plain'].append(_timed(plain, device))
            times['ours'].append(_timed(ours, device))
        n = len(dataset)
    plain_rate, our_rate = (n / statistics.median(times[k]) for k in ('plain', 'ours'))
    return dict(images=n, plain_images_per_s=round(plain_rate, 1), evaluate_images_per_s=round(our_rate, 1),
                ratio=round(our_rate / plain_rate, 3))


def corruption_cost(args, model: torch.nn.Module, device: torch.device) -> List[Dict[str, float]]:
    clock = time.process_time if args.cpu_time else time.perf_counter
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=g, device=device)
    rows = []
    with torch.inference_mode():
        def forward():
            model(x)

        forward()
        for name in CORRUPTIONS + EXTRA_CORRUPTIONS:
            def run(severity: int) -> None:
                corrupt(x, name, severity, generator=g, dataset=args.constants)

            once = {}
            for severity in range(1, 6):
                run(severity)  # warm-up: cached kernels and photos
                once[severity] = _timed(lambda: run(severity), device, clock)
            severity = max(once, key=once.get)
            pairs = [(_timed(forward, device, clock), _timed(lambda: run(severity), device, clock))
                     for _ in range(args.repeats)]
            rows.append(dict(
                corruption=name, severity=severity,
                corrupt_ms=round(1000 * statistics.median(c for _, c in pairs), 2),
                forward_ms=round(1000 * statistics.median(f for f, _ in pairs), 2),
                ratio=round(statistics.median(c / f for f, c in pairs), 3)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--num-images', type=int, default=1024, help='synthetic PNG images for the clean pass')
    parser.add_argument('--data-dir', default='', help='an existing image folder (<split>/<class>/<image>) instead')
    parser.add_argument('-b', '--batch-size', type=int, default=128)
    parser.add_argument('-j', '--workers', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--constants', default=None, choices=('cifar', 'imagenet'),
                        help='severity constants (default: cifar up to 64 px, else imagenet)')
    parser.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    parser.add_argument('--cpu-time', action='store_true', help='time process CPU time, not wall time (CPU only)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--skip-clean', action='store_true', help='only time the corruptions')
    parser.add_argument('--results-file', default='', help='write both tables as JSON')
    args = parser.parse_args()
    if args.cpu_time and args.device != 'cpu':
        parser.error('--cpu-time measures CPU work; use it with --device cpu')
    args.constants = args.constants or ('cifar' if args.img_size <= 64 else 'imagenet')

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.num_classes).to(device).eval()
    print(f'{args.model} at {args.img_size}x{args.img_size}, batch {args.batch_size}, {device}, '
          f'{torch.get_num_threads()} threads, {"CPU" if args.cpu_time else "wall"} time, torch {torch.__version__}, '
          f'timm {timm.__version__}', flush=True)

    results = {}
    if not args.skip_clean:
        clean = clean_throughput(args, model, device)
        results['clean_throughput'] = clean
        print(format_table([clean], floatfmt='.3f',
                           title=f'\nClean evaluation, {args.workers} loader worker(s) (target ratio >= 0.95)'))
    rows = corruption_cost(args, model, device)
    results['corruption_cost'] = rows
    print(format_table(rows, floatfmt='.3f', title=f'\nOn-the-fly corruption vs forward, most expensive severity, '
                                                   f'{args.constants} constants (target ratio <= 0.5)'))
    if args.results_file:
        write_results(args.results_file, results, fmt='json')
    worst = max(r['ratio'] for r in rows)
    ok = worst <= 0.5 and (args.skip_clean or results['clean_throughput']['ratio'] >= 0.95)
    clean_text = '' if args.skip_clean else f", clean ratio {results['clean_throughput']['ratio']:.3f}"
    print(f'\nworst corruption ratio {worst:.3f}{clean_text} - ' + ('targets met' if ok else 'TARGET MISSED'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
