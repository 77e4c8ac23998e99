"""Images per second of train.py's training loop with TENET against the same loop with --no-tenet.

Both runs use ``train_one_epoch`` exactly as ``train.py`` calls it, with the same model, optimizer,
batches (synthetic, already on the device, so data loading is out of the measurement) and settings;
only the task differs (``TenetTask`` at the given stage and period vs timm's ``ClassificationTask``).
Each timed round is a whole number of TENET periods after warm-up, and rounds alternate between the
two loops so machine noise hits both alike; the median round is reported, with the CPU time per
image (robust to other processes sharing the cores).

    python benchmarks/train_throughput.py                        # resnet50_tenet, stage 3, period 3
    python benchmarks/train_throughput.py --img-size 224 -b 64 --amp   # on a GPU
"""
import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch
from timm.optim import create_optimizer_v2

from timm_tenet import create_tenet_model, get_tenet_config
from timm_tenet.training.engine import train_one_epoch
from timm_tenet.training.factory import create_task
from timm_tenet.utils.env import versions


def _loop(tenet: bool, args, device: torch.device):
    torch.manual_seed(0)
    model = create_tenet_model(args.model, num_classes=args.num_classes).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = None
    if tenet:
        cfg = get_tenet_config(model).replace(warmup_steps=0, period=args.period, stage=args.stage)
    flags = SimpleNamespace(jsd_loss=False, bce_loss=False, bce_target_thresh=None, bce_sum=False,
                            bce_pos_weight=None, smoothing=0.1, model=args.model)
    task = create_task(flags, model, cfg, device)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt='sgd', lr=0.01, momentum=0.9,
                                    weight_decay=1e-4)
    return task, optimizer


def _round(task, optimizer, batches, device, amp_dtype, channels_last):
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else None
    kwargs = dict(device=device, log=False, channels_last=channels_last, log_interval=10 ** 9)
    if autocast is not None:
        kwargs['amp_autocast'] = autocast
    if device.type == 'cuda':
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    train_one_epoch(0, task, batches, optimizer, **kwargs)  # ends with a host read of the losses (a sync)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet50_tenet')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--img-size', type=int, default=None, help='default: 224 on CUDA, 128 on CPU')
    parser.add_argument('-b', '--batch-size', type=int, default=None, help='default: 64 on CUDA, 8 on CPU')
    parser.add_argument('--stage', type=int, default=3)
    parser.add_argument('--period', type=int, default=3)
    parser.add_argument('--periods-per-round', type=int, default=2, help='timed steps per round / period')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--results-file', default='')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    args.img_size = args.img_size or (224 if cuda else 128)
    args.batch_size = args.batch_size or (64 if cuda else 8)
    amp_dtype = torch.bfloat16 if args.amp else None
    if cuda:
        torch.backends.cudnn.benchmark = True
    steps = args.period * args.periods_per_round
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator).to(device),
                torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device))
               for _ in range(steps)]
    loops = {'no-tenet': _loop(False, args, device), 'tenet': _loop(True, args, device)}
    for name, (task, optimizer) in loops.items():  # warm-up round (allocator, cudnn autotune, first TENET steps)
        _round(task, optimizer, batches[:args.period], device, amp_dtype, args.channels_last)

    times = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, (task, optimizer) in loops.items():
            times[name].append(_round(task, optimizer, batches, device, amp_dtype, args.channels_last))
    images = steps * args.batch_size
    results = dict(
        model=args.model, stage=args.stage, period=args.period, device=str(device), img_size=args.img_size,
        batch_size=args.batch_size, amp=args.amp, steps_per_round=steps, rounds=args.rounds,
        torch_threads=torch.get_num_threads(),
    )
    for name, measured in times.items():
        results[f'{name}_img_per_s'] = images / statistics.median(w for w, _ in measured)
        results[f'{name}_cpu_ms_per_img'] = 1000 * statistics.median(c for _, c in measured) / images
    results['ratio_img_per_s'] = results['tenet_img_per_s'] / results['no-tenet_img_per_s']
    results['ratio_cpu_time'] = results['no-tenet_cpu_ms_per_img'] / results['tenet_cpu_ms_per_img']
    print(f'measured with {versions()}')
    print(json.dumps(results, indent=1))
    print(f"TENET throughput = {results['ratio_img_per_s']:.3f}x the --no-tenet loop "
          f"({results['tenet_img_per_s']:.1f} vs {results['no-tenet_img_per_s']:.1f} img/s; CPU-time ratio "
          f"{results['ratio_cpu_time']:.3f}); target >= 0.90x")
    if args.results_file:
        with open(args.results_file, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
