"""Does TENET make the digits model more robust? Baseline against TENET over several seeds.

Trains ``hparams/digits_resnet18.yaml`` (baseline) and ``hparams/digits_resnet18_tenet.yaml`` (TENET)
once per seed with ``train.py``'s code (checkpoints selected on the validation split), evaluates each
best checkpoint with ``validate.py``'s (on the held-out test split: clean, every on-the-fly corruption
at severities 1..5, FGSM and PGD at several eps), and writes to ``--output``:

- ``results.json``: every run's numbers, mean +- std per variant, the differences, wall-clock per part;
- ``results.md``: the summary table;
- ``robustness.png``: error against corruption severity and against eps, with the seed spread;
- ``cam.png``: Grad-CAM of the first seed's baseline and TENET models on the same test images.

    python benchmarks/robustness_study.py                      # 3 seeds
    python benchmarks/robustness_study.py --seeds 42 --eps 8/255

Every run happens in this process, its log in ``<variant>_seed<N>.train.log`` / ``.validate.log``: twelve
interpreter start-ups would add a minute to a study that must fit in 30 minutes on 2 CPU cores. An
interrupted study resumes: finished runs (``<variant>_seed<N>.run.json``) are not repeated.
"""
import argparse
import contextlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from timm_tenet.robustness import cam
from timm_tenet.robustness.attacks import parse_eps
from timm_tenet.demo import evaluate_robustness, train_recipe
from timm_tenet.data.digits import prepare_digits
from timm_tenet.training.run import training_errors

VARIANTS = {'baseline': 'digits_resnet18.yaml', 'TENET': 'digits_resnet18_tenet.yaml'}
SEVERITIES = (1, 2, 3, 4, 5)


@contextlib.contextmanager
def _logged_to(log_path: str) -> Iterator[None]:
    """Send a run's log records and printed output to ``log_path``; the console keeps the study's lines."""
    root = logging.getLogger()
    with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


def _run(what: str, fn: Callable[[], None], log_path: str) -> float:
    """Run one part in this process (the runs share one interpreter start-up), logged to ``log_path``;
    returns the seconds taken."""
    start = time.time()
    try:
        with _logged_to(log_path):
            fn()
    except (*training_errors(), SystemExit, RuntimeError) as e:
        raise SystemExit(f'{what} failed ({e}); see {log_path}') from e
    return time.time() - start


def train(variant: str, seed: int, output: str, epochs: Optional[int]) -> Dict[str, object]:
    experiment = f'{variant.lower()}_seed{seed}'
    extra_args = ['--seed', str(seed), '--log-interval', '1000', *(['--epochs', str(epochs)] if epochs else [])]
    seconds = _run(f'training {experiment}', lambda: train_recipe(Path(output), VARIANTS[variant], experiment, extra_args),
                   os.path.join(output, f'{experiment}.train.log'))
    return {'run_dir': os.path.join(output, experiment), 'train_s': round(seconds, 1)}


def evaluate(run_dir: str, eps: Sequence[str], pgd_steps: int, attack_samples: int) -> Dict[str, object]:
    results_file = Path(run_dir + '.results.json')
    seconds = _run(f'evaluating {run_dir}', lambda: evaluate_robustness(
        Path(run_dir), SEVERITIES, attack_samples, eps, pgd_steps, results_file), run_dir + '.validate.log')
    return {'results': json.loads(results_file.read_text()), 'eval_s': round(seconds, 1)}


def run_metrics(results: Dict[str, object]) -> Dict[str, float]:
    """The study's numbers for one run: errors in percent."""
    metrics = {'clean error': results['clean']['top1_err']}
    rows = results['corruptions']
    metrics['mean corruption error'] = statistics.fmean(r['top1_err'] for r in rows)
    for severity in SEVERITIES:
        metrics[f'corruption error s{severity}'] = statistics.fmean(
            r['top1_err'] for r in rows if r['severity'] == severity)
    for row in results['attacks']:
        metrics[f"{row['attack'].upper()} error eps {row['eps_text']}"] = row['top1_err']
    return metrics


def summarise(values: List[float]) -> Dict[str, float]:
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown_table(summary: Dict[str, Dict[str, Dict[str, float]]], seeds: Sequence[int]) -> str:
    names = list(summary['baseline'])
    lines = [
        f'| test error (%), {len(seeds)} seeds | baseline | TENET | TENET - baseline |',
        '|---|---|---|---|',
    ]
    for name in names:
        base, tenet = summary['baseline'][name], summary['TENET'][name]
        diff = tenet['mean'] - base['mean']
        lines.append(f"| {name} | {base['mean']:.2f} +- {base['std']:.2f} | {tenet['mean']:.2f} +- {tenet['std']:.2f} "
                     f'| {diff:+.2f} |')
    return '\n'.join(lines) + '\n'


def plot(per_run: Dict[str, List[Dict[str, float]]], eps: Sequence[str], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {'baseline': 'tab:blue', 'TENET': 'tab:red'}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    x_sev = [0, *SEVERITIES]
    eps_values = [parse_eps(e) * 255 for e in eps]
    for variant, runs in per_run.items():
        sev = np.array([[r['clean error']] + [r[f'corruption error s{s}'] for s in SEVERITIES] for r in runs])
        mean, std = sev.mean(0), sev.std(0, ddof=1) if len(runs) > 1 else np.zeros(sev.shape[1])
        left.plot(x_sev, mean, 'o-', color=colours[variant], label=variant)
        left.fill_between(x_sev, mean - std, mean + std, color=colours[variant], alpha=0.2)
        for attack, style in (('FGSM', 's--'), ('PGD', 'o-')):
            err = np.array([[r[f'{attack} error eps {e}'] for e in eps] for r in runs])
            mean, std = err.mean(0), err.std(0, ddof=1) if len(runs) > 1 else np.zeros(err.shape[1])
            right.plot(eps_values, mean, style, color=colours[variant], label=f'{variant}, {attack}')
            right.fill_between(eps_values, mean - std, mean + std, color=colours[variant], alpha=0.15)
    left.set(xlabel='corruption severity (0 = clean)', ylabel='test error (%), mean over corruptions',
             title='Common corruptions (on the fly)', xticks=x_sev)
    right.set(xlabel='eps (x / 255, L-inf)', ylabel='test error under attack (%)', title='FGSM and PGD',
              xticks=eps_values)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f'CIFAR ResNet-18 on digits: baseline vs TENET, mean +- std over {len(next(iter(per_run.values())))} seeds',
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[42, 43, 44])
    parser.add_argument('--eps', nargs='+', default=['2/255', '4/255', '8/255'])
    parser.add_argument('--pgd-steps', type=int, default=10)
    parser.add_argument('--attack-samples', type=int, default=64,
                        help='attack the first N test images (PGD-10 costs ~30 forward passes an image; default: 64)')
    parser.add_argument('--epochs', type=int, default=None, help="override the recipes' epochs (smoke runs)")
    parser.add_argument('--output', default=os.path.join('output', 'robustness_study'))
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.INFO)  # the runs' records go to their log files
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    start = time.time()

    runs: Dict[str, List[Dict[str, object]]] = {variant: [] for variant in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            record = os.path.join(output, f'{variant.lower()}_seed{seed}.run.json')
            if os.path.exists(record):  # finished by an earlier, interrupted call
                with open(record) as f:
                    run = json.load(f)
            else:
                run = {'seed': seed, **train(variant, seed, output, args.epochs)}
                run.update(evaluate(run['run_dir'], args.eps, args.pgd_steps, args.attack_samples))
                with open(record, 'w') as f:
                    json.dump(run, f)
            run['metrics'] = run_metrics(run['results'])
            runs[variant].append(run)
            print(f"{variant:>8} seed {seed}: train {run['train_s']:.0f} s, eval {run['eval_s']:.0f} s, "
                  f"clean error {run['metrics']['clean error']:.2f}%", flush=True)

    per_run = {variant: [r['metrics'] for r in variant_runs] for variant, variant_runs in runs.items()}
    summary = {variant: {name: summarise([m[name] for m in metrics]) for name in metrics[0]}
               for variant, metrics in per_run.items()}
    difference = {name: summary['TENET'][name]['mean'] - summary['baseline'][name]['mean'] for name in summary['TENET']}

    part_start = time.time()
    plot(per_run, args.eps, os.path.join(output, 'robustness.png'))
    plot_s = time.time() - part_start
    part_start = time.time()
    cam_argv = [
        '--models', runs['baseline'][0]['run_dir'], runs['TENET'][0]['run_dir'], '--titles', 'baseline', 'TENET',
        '--images', os.path.join(str(prepare_digits()), 'test'), '--num-images', '8',
        '--out', os.path.join(output, 'cam.png'),
    ]
    cam_s = _run('Grad-CAM', lambda: cam.main(cam_argv), os.path.join(output, 'cam.log'))

    table = markdown_table(summary, args.seeds)
    with open(os.path.join(output, 'results.md'), 'w') as f:
        f.write(table)
    wall = {
        'train_s': {v: [r['train_s'] for r in rs] for v, rs in runs.items()},
        'eval_s': {v: [r['eval_s'] for r in rs] for v, rs in runs.items()},
        'plot_s': round(plot_s, 1), 'cam_s': round(cam_s, 1), 'total_s': round(time.time() - start, 1),
    }
    with open(os.path.join(output, 'results.json'), 'w') as f:
        json.dump({'seeds': args.seeds, 'eps': args.eps, 'pgd_steps': args.pgd_steps,
                   'attack_samples': args.attack_samples, 'summary': summary,
                   'difference_tenet_minus_baseline': difference, 'runs': per_run, 'wall_clock': wall}, f, indent=2)
    print(table)
    print(f"wall clock: {wall['total_s'] / 60:.1f} min; outputs in {output}")


if __name__ == '__main__':
    main()
