"""The embedded default (``make demo``): TENET training of the CIFAR ResNet-18 on scikit-learn's digits.

    python -m timm_tenet.demo [--output DIR] [train.py flags ...]

Runs ``train.py -c hparams/digits_resnet18_tenet.yaml`` into ``DIR/digits_resnet18_tenet`` and reports
the validation accuracy; further flags go to the training command line (e.g. ``--epochs 1``).
"""
import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .train_args import parse_train_args
from .training import TrainResult, run_training, training_errors

__all__ = ['DEFAULT_RECIPE', 'find_recipe', 'main', 'train_default']

_logger = logging.getLogger('timm_tenet.demo')

DEFAULT_RECIPE = 'digits_resnet18_tenet.yaml'


def find_recipe(name: str = DEFAULT_RECIPE) -> Path:
    """A recipe from the source tree's ``hparams/`` folder (the demo runs from a checkout)."""
    path = Path(__file__).resolve().parent.parent / 'hparams' / name
    if not path.is_file():
        raise FileNotFoundError(f"recipe '{name}' not found at {path}: run the demo from a source checkout")
    return path


def train_default(output: Path, extra_args: Sequence[str] = ()) -> TrainResult:
    """Train the embedded default into ``output/digits_resnet18_tenet``; returns the run's result."""
    argv = ['-c', str(find_recipe()), '--output', str(output), '--experiment', 'digits_resnet18_tenet', *extra_args]
    args, _ = parse_train_args(argv)
    return run_training(args)


def _report(result: TrainResult, seconds: float) -> List[str]:
    top1 = result.eval_metrics.get('top1')
    return [
        f'TENET training of cifar_resnet18_tenet on digits: {result.epochs} epochs in {seconds:.0f} s',
        f'validation top-1 {top1:.2f}% (best {result.best_metric:.2f}% at epoch {result.best_epoch})',
        f'outputs: {result.output_dir} (args.yaml, summary.csv, model_best.pth.tar, train.log)',
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from timm.utils import setup_default_logging
    if not logging.root.handlers:
        setup_default_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default='output/demo', help='output folder (default: output/demo)')
    args, extra = parser.parse_known_args(argv)
    output = Path(args.output)
    lines: Dict[str, List[str]] = {}
    start = time.time()
    try:
        result = train_default(output, extra)
    except training_errors() as e:
        _logger.error(f'error: {e}')
        return 1
    lines['train'] = _report(result, time.time() - start)
    print('\n'.join(line for section in lines.values() for line in section))
    return 0


if __name__ == '__main__':
    sys.exit(main())
