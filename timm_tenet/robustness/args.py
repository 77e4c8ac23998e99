"""Command line of ``validate.py``: timm's validation flags (same names and dests) plus corruption and
attack evaluation, and ``-c/--config`` YAML files read by :func:`timm_tenet.training.args.load_config_defaults`."""
import argparse
from typing import Optional, Sequence, Tuple

from timm.utils import ParseKwargs

from .attacks import ATTACKS
from .results import RESULT_FORMATS
from ..training.args import add_dataset_reader_args, add_dataset_source_args, add_model_input_args
from ..utils.cli import parse_args_with_config, parser_with_config

__all__ = ['C_FORMATS', 'CORRUPTION_CONSTANTS', 'build_validate_parser', 'parse_validate_args']

C_FORMATS = ('imagenet-c', 'cifar-c')
CORRUPTION_CONSTANTS = ('auto', 'cifar', 'imagenet')


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Dataset parameters')
    add_dataset_source_args(group)
    group.add_argument('--split', metavar='NAME', default='validation',
                       help='dataset split (default: validation)')
    group.add_argument('--num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in dataset split, for IterableDatasets.')
    add_dataset_reader_args(group)
    group.add_argument('--valid-labels', default='', type=str, metavar='FILENAME',
                       help='Valid label indices txt file (one index per line) for validation of a partial '
                            'label space: logits are restricted to these classes')


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', '-m', metavar='NAME', default=None,
                       help='model architecture: any timm name, "<arch>_tenet", "hf-hub:org/name" or '
                            '"local-dir:/path" (default: the "arch" recorded in --checkpoint)')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='use pre-trained model (default when no --checkpoint is given, as timm)')
    group.add_argument('--checkpoint', default='', type=str, metavar='PATH',
                       help='checkpoint file, or a train.py output folder (model_best.pth.tar, else last.pth.tar, '
                            'else the newest *.pth.tar); its recorded arguments (model, num_classes, input size, '
                            'mean/std, crop_pct) fill the flags not given')
    group.add_argument('--use-ema', action='store_true', default=False,
                       help='use the EMA weights (state_dict_ema) of the checkpoint')
    add_model_input_args(group)
    group.add_argument('--use-train-size', action='store_true', default=False,
                       help='force use of train input size, even when test size is specified in pretrained cfg')
    group.add_argument('--crop-mode', default=None, type=str, metavar='N',
                       help='Input image crop mode (squash, border, center). Model default if None.')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Runtime parameters')
    group.add_argument('-b', '--batch-size', default=256, type=int, metavar='N',
                       help='mini-batch size (default: 256)')
    group.add_argument('-j', '--workers', default=4, type=int, metavar='N',
                       help='number of data loading workers (default: 4)')
    group.add_argument('--device', default=None, type=str,
                       help='Device (accelerator) to use (default: "cuda" when available, else "cpu").')
    group.add_argument('--amp', action='store_true', default=False,
                       help='use Native AMP for mixed precision inference (attack gradients stay float32)')
    group.add_argument('--amp-dtype', default='float16', type=str,
                       help='lower precision AMP dtype (default: float16)')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='Use channels_last memory layout')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='Enable compilation w/ specified backend (default: inductor).')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode (default: None).')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help='disable fast prefetcher (the prefetcher is only used on CUDA)')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='Pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--log-freq', default=10, type=int, metavar='N',
                       help='batch interval of the running top-1 shown on the progress bar (default: 10)')
    group.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                       help='Progress bars (default: when stderr is a terminal).')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed of the noise corruptions and PGD starts (default: 42)')
    group.add_argument('--results-file', default='', type=str, metavar='FILENAME',
                       help='Output file for the results (clean row, corruption rows and summary, attack rows), '
                            'written atomically')
    group.add_argument('--results-format', default='csv', type=str, choices=RESULT_FORMATS,
                       help='Format for results file one of (csv, json) (default: csv).')


def _add_robustness_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'Corruption robustness',
        'Released -C sets (--corruption-dir) or corruptions generated on the fly (--corrupt), not both at once.')
    group.add_argument('--corruption-dir', default='', type=str, metavar='DIR',
                       help='root of a CIFAR-10/100-C (<corruption>.npy + labels.npy) or ImageNet-C '
                            '(<corruption>/<severity>/<class>/) set; every corruption and severity found is evaluated')
    group.add_argument('--corruption-format', default=None, choices=C_FORMATS,
                       help='layout of --corruption-dir (default: cifar-c when it holds labels.npy, else imagenet-c); '
                            'imagenet-c also reports mCE and relative mCE against AlexNet')
    group.add_argument('--corruptions', nargs='+', default=None, metavar='NAME',
                       help='evaluate only these corruptions of --corruption-dir (comma or space separated)')
    group.add_argument('--corrupt', nargs='+', default=None, metavar='NAME',
                       help='corrupt the --data-dir images on the fly with these corruptions (comma or space '
                            'separated; "all" = the benchmark ones mCE is defined on, "extra" = speckle_noise, '
                            'gaussian_blur, spatter, saturate) as batched tensor ops on the device')
    group.add_argument('--corrupt-released', action='store_true',
                       help='store each --corrupt batch as the released files were before the forward: uint8 '
                            'truncation (CIFAR-10-C), and with ImageNet constants JPEG quality 85 (ImageNet-C), '
                            'so that numbers compare with released-style files (default: the float result)')
    group.add_argument('--corrupt-constants', default='auto', choices=CORRUPTION_CONSTANTS,
                       help='severity constants of --corrupt: CIFAR-10-C (32 px) or ImageNet-C (224 px) '
                            '(default auto: cifar when the input is at most 64 px)')
    group.add_argument('--severities', nargs='+', default=None, metavar='S',
                       help='severities 1..5 to evaluate (comma or space separated; default: all five)')

    group = parser.add_argument_group(
        'Adversarial robustness',
        'White-box L-inf attacks on [0, 1] inputs with the normalisation inside the model, in eval mode and '
        'float32 (also with --amp).')
    group.add_argument('--attack', nargs='+', default=None, metavar='NAME',
                       help=f'attack(s), comma or space separated: {", ".join(ATTACKS)} (autoattack needs '
                            f'`pip install pyautoattack`)')
    group.add_argument('--eps', nargs='+', default=['8/255'], metavar='EPS',
                       help='L-inf radius (radii) in [0, 1] pixel units, numbers or fractions such as 8/255 '
                            '(default: 8/255)')
    group.add_argument('--attack-steps', type=int, default=10, metavar='N',
                       help='PGD steps (default: 10)')
    group.add_argument('--attack-step-size', type=str, default=None, metavar='STEP',
                       help='PGD step size, e.g. 2/255 (default: eps / 4)')
    group.add_argument('--attack-restarts', type=int, default=1, metavar='N',
                       help='PGD random restarts (default: 1)')
    group.add_argument('--attack-samples', type=int, default=None, metavar='N',
                       help='attack only the first N images of the split (default: all)')


def build_validate_parser() -> argparse.ArgumentParser:
    """The ``validate.py`` parser: timm's validation flags plus corruption and attack evaluation."""
    parser = parser_with_config('Clean, corruption and adversarial evaluation of timm / TENET models')
    _add_data_args(parser)
    _add_model_args(parser)
    _add_runtime_args(parser)
    _add_robustness_args(parser)
    return parser


def parse_validate_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``validate.py``'s command line (``argv`` defaults to ``sys.argv[1:]``).

    Returns:
        The namespace and its YAML text. A config key that is not a dest of this parser is a
        :class:`timm_tenet.utils.cli.ConfigError`.
    """
    return parse_args_with_config(build_validate_parser(), argv)
