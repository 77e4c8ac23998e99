"""How far the mask of a float16-autocast TENET step is from the float32 mask, beside what float16
activations alone cost.

For each batch (untrained model, same weights, batch and groups for every variant), largest absolute
differences from a float32 mask:

* ``round A``: the float32 mask of the float32 map ``A`` rounded to float16 (``A.half().float()``; ``F``,
  ``D`` and the mask maths in float32) against the float32 mask of ``A``: the float16 resolution of the
  map alone; ``mask only``: the same rounding in the map the mask weights, with the float32 gradient
  (how much of it comes through the gradient);
* ``step``: the mask a float16-autocast ``TenetTask`` step computes (``F`` and ``D``'s gradient pass in
  float16, with the logit-gradient scale ``--scale``) against the float32 mask of the same float16 map and
  groups (``D``'s gradient pass in float32);
* ``sign flips``: groups whose importance (the sum of their channel weights) has another sign in the step
  than in float32; such a group's mask jumps between 1 (left alone) and ``sigmoid(-z)``.

    python benchmarks/mask_precision.py --stage 3 --batches 10
    python benchmarks/mask_precision.py --stage 3 --batches 10 --scale 1
"""
import argparse
import statistics

import timm
import torch

from timm_tenet import TenetConfig, TenetTask
from timm_tenet.inhibition import reversed_mask
from timm_tenet.split_task import LOGIT_GRAD_SCALE
from timm_tenet.task import TenetTrainableModule
from timm_tenet.utils.env import versions


def float16_step(trainable: TenetTrainableModule, x: torch.Tensor, y: torch.Tensor, scale: float):
    """One float16-autocast TENET step with logit-gradient scale ``scale``: the map, gradients, group ids and
    mask its inhibition saw and made."""
    logit_gradient = trainable.logit_gradient
    trainable.logit_gradient = lambda a, t: logit_gradient(a, t, scale=scale)
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            return trainable(x, y, tenet_step=True)
    finally:
        del trainable.logit_gradient


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnet18')
    parser.add_argument('--stage', type=int, default=3)
    parser.add_argument('-b', '--batch-size', type=int, default=2)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batches', type=int, default=10)
    parser.add_argument('--scale', type=float, default=LOGIT_GRAD_SCALE,
                        help='logit-gradient scale of the float16 step (default: the one TENET uses)')
    args = parser.parse_args()

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10)
    cfg = TenetConfig(stage=args.stage, only_correct=False, warmup_steps=0, period=1)
    task = TenetTask(model, cfg, verbose=False).train()
    trainable = task.get_trainable_module()
    print(f'{args.model} stage {args.stage}, batch {args.batch_size}, {args.img_size} px, float16 step scale '
          f'{args.scale:g}; {versions()}')
    print(f"{'batch':>5} {'round A':>9} {'mask only':>10} {'step':>9} {'step / round A':>15} {'sign flips':>11}")
    rows = []
    for index in range(args.batches):
        gen = torch.Generator().manual_seed(index)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
        y = torch.randint(0, 10, (args.batch_size,), generator=gen)
        # the step's clean pass updated D's running statistics before its eval-mode gradient pass, so the
        # float32 masks below see the statistics that pass saw
        step = float16_step(trainable, x, y, args.scale)
        group_ids = step['group_ids']

        def float32_mask(features):
            grads = trainable.split.to_maps(trainable.logit_gradient(features, y)[0])
            return reversed_mask(trainable.split.to_maps(features), grads, group_ids, cfg.num_groups), grads

        with torch.no_grad():
            features = trainable.features(x)
        reference, reference_grads = float32_mask(features)
        rounded = features.half().float()
        rounding = (float32_mask(rounded)[0] - reference).abs().max().item()
        mask_only = (reversed_mask(trainable.split.to_maps(rounded), reference_grads, group_ids, cfg.num_groups)
                     - reference).abs().max().item()
        exact, grads = float32_mask(step['maps'].float())
        gap = (step['mask'] - exact).abs().max().item()

        def importance(g):
            return torch.zeros(group_ids.shape[0], cfg.num_groups).scatter_add_(1, group_ids, g.flatten(2).mean(-1))

        flips = int((importance(step['grads']).sign() != importance(grads).sign()).sum())
        rows.append((rounding, mask_only, gap, flips))
        print(f'{index:>5} {rounding:>9.2e} {mask_only:>10.2e} {gap:>9.2e} {gap / rounding:>15.2f} {flips:>11}')
    print(f'groups whose importance changed sign: {sum(row[3] for row in rows)} in {len(rows)} batches')
    for name, column in (('round A', 0), ('mask only', 1), ('step', 2)):
        values = [row[column] for row in rows]
        print(f'{name}: median {statistics.median(values):.2e}, range {min(values):.2e}-{max(values):.2e}')


if __name__ == '__main__':
    main()
