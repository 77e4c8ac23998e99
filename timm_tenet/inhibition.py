"""The TENET maths on one feature map: channel grouping (CFG), the reversed mask (GMW + RRF) and the
orthogonality loss.

Everything here is batched over the samples and runs on the features' device with no host
synchronisation, so it can sit inside a training step. The functions know nothing about models:
they take a feature map ``A`` (B x C x H x W, or any B x C x ... layout whose trailing dims are
spatial) and, for the mask, the gradient of the chosen logits with respect to ``A``.

Group ids are per sample: group 3 of sample 0 is unrelated to group 3 of sample 1. Group sums use
``scatter_add`` / ``index_add`` and ``gather`` rather than one-hot matrix products, so that TF32
matmul settings cannot lower their precision, and loops run over the K groups, never over samples.
"""
from typing import Optional

import torch

__all__ = ['group_channels', 'reversed_mask', 'orthogonal_loss']

_STD_EPS = 1e-8


def _check_groups(num_groups: int, num_channels: int) -> None:
    if num_groups < 2:
        raise ValueError(f'TENET needs at least 2 channel groups, got num_groups={num_groups}.')
    if num_groups > num_channels:
        raise ValueError(
            f'TENET num_groups={num_groups} is more than the {num_channels} channels of the inhibited feature map; '
            f'use at most {num_channels} groups or an earlier/wider stage.')


def _resolve_num_groups(group_ids: torch.Tensor, num_groups: Optional[int]) -> int:
    # Inferring the count reads a value back from the device: callers in a training step pass it.
    return int(group_ids.max()) + 1 if num_groups is None else num_groups


def _squared_distances(points: torch.Tensor, points_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances B x C x K between C points and K centres, both B x * x N."""
    cross = torch.bmm(points, centres.transpose(1, 2))
    return (points_sq.unsqueeze(2) - 2 * cross + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min_(0)


def _nearest_centre(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centre, B x C; ``|x|^2`` is the same for every centre, so it is dropped."""
    centres_sq = centres.pow(2).sum(-1).unsqueeze(1)
    return torch.baddbmm(centres_sq, points, centres.transpose(1, 2), alpha=-2).argmin(-1)


def _kmeans_plus_plus(points: torch.Tensor, points_sq: torch.Tensor, num_groups: int, generator) -> torch.Tensor:
    """k-means++ seeding: indices B x K of distinct channels, each drawn with probability ~ D^2."""
    batch, num_channels, _ = points.shape
    rows = torch.arange(batch, device=points.device)
    first = torch.randint(num_channels, (batch,), device=points.device, generator=generator)
    chosen = [first]
    taken = torch.zeros(batch, num_channels, dtype=torch.bool, device=points.device)
    taken[rows, first] = True
    nearest = _squared_distances(points, points_sq, points[rows, first].unsqueeze(1)).squeeze(2)
    for _ in range(num_groups - 1):
        # the floor keeps rows of identical channels drawable, the cap keeps the row sum finite
        weights = torch.where(taken, torch.zeros_like(nearest), nearest.clamp(max=1e30) + 1e-30)
        # inverse-CDF draw: one uniform per row (multinomial draws one exponential per channel);
        # right=True never lands on a zero-weight (taken) channel
        cdf = weights.cumsum(1)
        target = torch.rand(batch, 1, device=points.device, generator=generator) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(num_channels - 1)
        chosen.append(pick)
        taken[rows, pick] = True
        dist = _squared_distances(points, points_sq, points[rows, pick].unsqueeze(1)).squeeze(2)
        nearest = torch.minimum(nearest, dist)
    return torch.stack(chosen, dim=1)


def _snap_to_channels(points: torch.Tensor, points_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Replace each centre by its nearest channel, greedily in centre order so the K channels stay distinct."""
    batch, num_channels, _ = points.shape
    # |c|^2 is the same for every channel, so it is dropped; K x C layout keeps each row contiguous
    dist = torch.baddbmm(points_sq.unsqueeze(1), centres, points.transpose(1, 2), alpha=-2)
    num_centres = centres.shape[1]
    picks = []
    for k in range(num_centres):
        pick = dist[:, k].argmin(1)
        picks.append(pick)
        # the picked channel is out of reach for the later centres
        dist.scatter_(2, pick.view(batch, 1, 1).expand(batch, num_centres, 1), float('inf'))
    return torch.stack(picks, dim=1)


def _group_sums(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sum B x C x N values over the channels of each group: B x K x N (differentiable in ``values``)."""
    batch, _, length = values.shape
    index = group_ids.unsqueeze(-1).expand(-1, -1, length)
    return values.new_zeros(batch, num_groups, length).scatter_add(1, index, values)


def _group_counts(group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    ones = torch.ones(group_ids.shape, dtype=torch.float32, device=group_ids.device)
    return ones.new_zeros(group_ids.shape[0], num_groups).scatter_add_(1, group_ids, ones)


@torch.no_grad()
def group_channels(
        features: torch.Tensor,
        num_groups: int,
        iters: int = 10,
        medoid: bool = True,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Channel-wise feature grouping (CFG): k-means of each sample's channel maps.

    Each of the C channels (its H*W values) is a point; squared Euclidean distance; k-means++ seeding so
    that the grouping does not hinge on a lucky random start; a fixed number of Lloyd iterations (no
    convergence test, which would need a device-to-host read). With ``medoid=True`` every updated centre
    is snapped to its nearest real channel, centres kept distinct, as in the reference implementation;
    otherwise centres are plain means and an empty group keeps its previous centre.

    Args:
        features: Feature map B x C x ... (no gradient flows through grouping).
        num_groups: Groups per sample, 2 <= num_groups <= C.
        iters: Lloyd iterations.
        medoid: Snap centres to channels.
        generator: Random generator on the features' device, for reproducible seeding.

    Returns:
        Long tensor B x C of per-sample group ids in [0, num_groups).

    Examples:

        ```python
        ids = group_channels(torch.randn(2, 16, 4, 4), num_groups=3)  # shape (2, 16)
        ```
    """
    # non-finite activations (a diverged step) must not crash the sampler; the loss reports them
    points = torch.nan_to_num(features.detach().flatten(2).float(), nan=0.0, posinf=0.0, neginf=0.0)
    _check_groups(num_groups, points.shape[1])
    points_sq = points.pow(2).sum(-1)
    rows = torch.arange(points.shape[0], device=points.device).unsqueeze(1)
    centres = points[rows, _kmeans_plus_plus(points, points_sq, num_groups, generator)]
    batch, num_channels, length = points.shape
    offsets = rows * num_groups  # flat group index b * K + k: one index_add for the whole batch
    flat_points = points.reshape(-1, length)
    for _ in range(iters):
        flat_ids = (_nearest_centre(points, centres) + offsets).flatten()
        counts = torch.bincount(flat_ids, minlength=batch * num_groups).view(batch, num_groups, 1).to(points.dtype)
        sums = points.new_zeros(batch * num_groups, length).index_add_(0, flat_ids, flat_points)
        means = torch.where(counts > 0, sums.view(batch, num_groups, length) / counts.clamp_min(1), centres)
        centres = points[rows, _snap_to_channels(points, points_sq, means)] if medoid else means
    return _nearest_centre(points, centres)


@torch.no_grad()
def reversed_mask(
        features: torch.Tensor,
        grads: torch.Tensor,
        group_ids: torch.Tensor,
        num_groups: Optional[int] = None,
) -> torch.Tensor:
    """Group-wise map weighting (GMW) and the rectified reverse function (RRF): the inhibition mask.

    Channel weight ``w_j`` = spatial mean of the gradient ``G_j``; group importance ``I_l`` = sum of the
    group's ``w_j``; group map ``m_l`` = sum of the group's ``w_j * A_j``; standardised over its positions
    with the population std, ``z = (m - mean) / (std + 1e-8)``; reversed map ``sigmoid(-z)``. Groups with
    ``I_l <= 0`` get 1 (left alone); every channel takes its group's map. Computed in float32 whatever
    the input dtype, as a constant.

    Args:
        features: Feature map ``A``, B x C x ...
        grads: ``dL_d/dA``, same shape.
        group_ids: B x C group ids from :func:`group_channels`.
        num_groups: Number of groups; inferred from ``group_ids`` (a device read) when omitted.

    Returns:
        Float32 mask with the features' shape, values in (0, 1].
    """
    if grads.shape != features.shape:
        raise ValueError(f'grads shape {tuple(grads.shape)} differs from features shape {tuple(features.shape)}.')
    num_groups = _resolve_num_groups(group_ids, num_groups)
    acts = features.detach().flatten(2).float()
    weights = grads.detach().flatten(2).float().mean(-1)
    importance = _group_counts(group_ids, num_groups).new_zeros(group_ids.shape[0], num_groups)
    importance.scatter_add_(1, group_ids, weights)
    maps = _group_sums(weights.unsqueeze(-1) * acts, group_ids, num_groups)
    z = (maps - maps.mean(-1, keepdim=True)) / (maps.std(-1, correction=0, keepdim=True) + _STD_EPS)
    reversed_maps = torch.where(importance.unsqueeze(-1) > 0, torch.sigmoid(-z), torch.ones_like(z))
    index = group_ids.unsqueeze(-1).expand(-1, -1, acts.shape[-1])
    return reversed_maps.gather(1, index).view(features.shape)


def orthogonal_loss(
        features: torch.Tensor,
        group_ids: torch.Tensor,
        num_groups: Optional[int] = None,
        reduction: str = 'mean',
) -> torch.Tensor:
    """Orthogonality loss between the groups' channel-mean maps (reference implementation's form).

    Per sample, the non-empty groups' mean maps form M (G' x HW); the loss is the mean of ``|M M^T|``
    over pairs i < j (raw dot products, no normalisation), 0 when fewer than two groups are non-empty.
    Gradients flow into ``features``; computed in float32.

    Args:
        features: Feature map B x C x ...
        group_ids: B x C group ids.
        num_groups: Number of groups; inferred from ``group_ids`` (a device read) when omitted.
        reduction: ``'mean'`` over the batch, or ``'none'`` for the per-sample values (B,).
    """
    if reduction not in ('mean', 'none'):
        raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'.")
    num_groups = _resolve_num_groups(group_ids, num_groups)
    acts = features.flatten(2).float()
    counts = _group_counts(group_ids, num_groups)
    means = _group_sums(acts, group_ids, num_groups) / counts.clamp_min(1).unsqueeze(-1)
    gram = torch.bmm(means, means.transpose(1, 2)).abs()
    present = counts > 0
    upper = torch.ones(num_groups, num_groups, dtype=torch.bool, device=gram.device).triu(1)
    pairs = present.unsqueeze(2) & present.unsqueeze(1) & upper
    per_sample = (gram * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)
    return per_sample.mean() if reduction == 'mean' else per_sample
