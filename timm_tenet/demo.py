"""The embedded default (``make demo``): TENET training of the CIFAR ResNet-18 on scikit-learn's digits,
then its robustness on the held-out test split.

    python -m timm_tenet.demo [--output DIR] [--no-robustness] [--severities S ...] [--attack-samples N]
                              [train.py flags ...]

Runs ``train.py -c hparams/digits_resnet18_tenet.yaml`` into ``DIR/digits_resnet18_tenet`` and reports
the validation accuracy; further flags go to the training command line (e.g. ``--epochs 1``). Then
``validate.py`` evaluates the best checkpoint on the test split: clean, every on-the-fly corruption at
severities 1, 3 and 5, and FGSM / PGD-10 at eps 8/255, into ``robustness.json`` beside the checkpoints.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .robustness import validation
from .training.args import parse_train_args
from .training.run import TrainResult, run_training, training_errors
from .utils.env import versions

__all__ = ['DEFAULT_RECIPE', 'evaluate_robustness', 'find_recipe', 'main', 'summary_table', 'train_recipe']

_logger = logging.getLogger('timm_tenet.demo')

DEFAULT_RECIPE = 'digits_resnet18_tenet.yaml'


def find_recipe(name: str = DEFAULT_RECIPE) -> Path:
    """A recipe from the source tree's ``hparams/`` folder (the demo runs from a checkout)."""
    path = Path(__file__).resolve().parent.parent / 'hparams' / name
    if not path.is_file():
        raise FileNotFoundError(f"recipe '{name}' not found at {path}: run the demo from a source checkout")
    return path


def train_recipe(
        output: Path,
        recipe: str = DEFAULT_RECIPE,
        experiment: Optional[str] = None,
        extra_args: Sequence[str] = (),
) -> TrainResult:
    """Train a ``hparams/`` recipe into ``output/<experiment>`` (default: the recipe's name), ``extra_args``
    appended to its command line; returns the run's result."""
    path = find_recipe(recipe)
    argv = ['-c', str(path), '--output', str(output), '--experiment', experiment or path.stem, *extra_args]
    args, _ = parse_train_args(argv)
    return run_training(args)


def evaluate_robustness(
        run_dir: Path,
        severities: Sequence[int] = (1, 3, 5),
        attack_samples: Optional[int] = None,
        eps: Sequence[str] = ('8/255',),
        pgd_steps: int = 10,
        results_file: Optional[Path] = None,
) -> Path:
    """``validate.py`` on the run's best checkpoint over the digits test split: clean, every on-the-fly
    corruption at ``severities``, FGSM and PGD at ``eps``; returns the JSON results file (default
    ``run_dir/robustness.json``)."""
    results_file = results_file or run_dir / 'robustness.json'
    argv = [
        '--checkpoint', str(run_dir), '--dataset', 'sklearn/digits', '--split', 'test', '-b', '128', '-j', '0',
        '--channels-last',  # ~1.4x the forward rate of this model on CPU
        '--corrupt', 'all', '--severities', *map(str, severities),
        '--attack', 'fgsm', 'pgd', '--eps', *eps, '--attack-steps', str(pgd_steps),
        *(['--attack-samples', str(attack_samples)] if attack_samples else []),
        '--results-file', str(results_file), '--results-format', 'json',
    ]
    if validation.main(argv) != 0:
        raise RuntimeError(f"robustness evaluation failed: validate.py {' '.join(argv)}")
    return results_file


def summary_table(result: TrainResult, train_s: float, results_file: Optional[Path] = None,
                  eval_s: Optional[float] = None) -> str:
    """The demo's figures as one table, headed by the versions they were measured with, to compare a run against
    the README's."""
    rows = [
        ('training', f'{result.epochs} epochs in {train_s:.0f} s'),
        ('validation top-1, last epoch', f"{result.eval_metrics.get('top1', float('nan')):.2f}%"),
        ('validation top-1, best', f'{result.best_metric:.2f}% at epoch {result.best_epoch}'),
    ]
    if results_file is not None:
        results = json.loads(results_file.read_text())
        rows.append(('test error, clean', f"{results['clean']['top1_err']:.2f}% ({results['clean']['split']} split)"))
        corruptions = results['corruptions']
        rows.append(('test error, mean over corruptions',
                     f"{sum(r['top1_err'] for r in corruptions) / len(corruptions):.2f}% ({len(corruptions)} "
                     f'corruption/severity pairs)'))
        rows += [(f"test error, {r['attack'].upper()}{'-' + str(r['steps']) if r['attack'] == 'pgd' else ''} "
                  f"eps {r['eps_text']}", f"{r['top1_err']:.2f}% ({r['count']} images)") for r in results['attacks']]
        rows.append(('evaluation', f'{eval_s:.0f} s'))
    rows.append(('outputs', str(results_file or result.output_dir)))
    width = max(len(what) for what, _ in rows)
    lines = [f'make demo summary ({versions()})'] + [f'  {what:<{width}}  {value}' for what, value in rows]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from timm.utils import setup_default_logging
    if not logging.root.handlers:
        setup_default_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='output/demo', help='output folder (default: output/demo)')
    parser.add_argument('--no-robustness', dest='robustness', action='store_false',
                        help='train only, skip the robustness evaluation')
    parser.add_argument('--severities', type=int, nargs='+', default=[1, 3, 5],
                        help='corruption severities evaluated (default: 1 3 5)')
    parser.add_argument('--attack-samples', type=int, default=None,
                        help='attack only the first N test images (default: all)')
    args, extra = parser.parse_known_args(argv)
    output = Path(args.output)
    start = time.time()
    try:
        result = train_recipe(output, extra_args=extra)
    except training_errors() as e:
        _logger.error(str(e))
        return 1
    train_s, results_file, eval_s = time.time() - start, None, None
    if args.robustness:
        try:
            start = time.time()
            results_file = evaluate_robustness(Path(result.output_dir), args.severities, args.attack_samples)
            eval_s = time.time() - start
        except RuntimeError as e:
            _logger.error(str(e))
            return 1
    print(summary_table(result, train_s, results_file, eval_s), flush=True)
    return 0

if __name__ == '__main__':
    sys.exit(main())
