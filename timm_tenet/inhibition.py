"""The TENET maths on one feature map: channel grouping (CFG), the reversed mask (GMW + RRF) and the
orthogonality loss.

Everything here is batched over the samples and runs on the features' device with no host read (no
``item``, ``bincount``, ``nonzero`` or boolean-mask indexing), so it can sit inside a training step and
``group_channels`` compiles to one graph. The functions know nothing about models: they take a feature
map ``A`` (B x C x H x W, or any B x C x ... layout whose trailing dims are spatial) and, for the mask,
the gradient of the chosen logits with respect to ``A``.

Precision is fixed here, not by the caller: every function runs with autocast off and returns float32,
whatever the input dtype and autocast context. The k-means distances are the one place where a matmul
decides something (which channel goes to which group; near-ties flip under float16, bfloat16 or TF32),
so they are computed in float64, which neither autocast nor TF32 ever lowers. The orthogonality Gram
entries are float32 products summed without a matmul (a float16 Gram overflows on large maps), and group
sums use ``scatter_add`` / ``index_add``, so no TF32 setting reaches them either.

Group ids are per sample: group 3 of sample 0 is unrelated to group 3 of sample 1. Loops run over the K
centres (the greedy distinct snapping and k-means++ draws are sequential by definition), never over
samples or channels.

Each op here is a kernel launch on a GPU, so ops are folded wherever every value stays bit-identical
(the group ids for a given generator are those of the unfolded code, which a test keeps): a channel and
its squared norm come from one ``gather`` of a ``[x, |x|^2]`` table, the k-means++ weight update is one
``clamp`` with the running weights as upper bound, picks are concatenated once. Eager, K = 6 groups and
10 Lloyd iterations take 281 top-level ATen ops (331 before the folding, 405 before issue 10); 120 of
them are the greedy snapping's ``argmin`` and ``scatter_`` per centre and iteration, which stay
sequential. Under ``torch.compile`` the grouping is one graph.
"""
from typing import Optional, Tuple

import torch

__all__ = ['group_channels', 'reversed_mask', 'orthogonal_loss']

_STD_EPS = 1e-8
_DRAW_FLOOR = 1e-30  # keeps channels at distance 0 (identical channels) drawable by k-means++


def _check_groups(num_groups: int, num_channels: int) -> None:
    if num_groups < 2:
        raise ValueError(f'TENET needs at least 2 channel groups, got num_groups={num_groups}.')
    if num_groups > num_channels:
        raise ValueError(
            f'TENET num_groups={num_groups} is more than the {num_channels} channels of the inhibited feature map; '
            f'use at most {num_channels} groups or an earlier/wider stage.')


def _distance_dtype(device: torch.device) -> torch.dtype:
    # CPU float32 matmuls are IEEE; on accelerators float32 matmuls may run as TF32 (or lower), float64 never
    return torch.float32 if device.type == 'cpu' else torch.float64


def _resolve_num_groups(group_ids: torch.Tensor, num_groups: Optional[int]) -> int:
    # Inferring the count reads a value back from the device: callers in a training step pass it.
    return int(group_ids.max()) + 1 if num_groups is None else num_groups


def _gather_rows(table: torch.Tensor, picks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows ``picks`` (B x K) of the B x C x (N + 1) table ``[x, |x|^2]``: the channels (B x K x N) and their
    squared norms (B x K), in one ``gather``."""
    rows = table.gather(1, picks.unsqueeze(-1).expand(-1, -1, table.shape[-1]))
    return rows[..., :-1], rows[..., -1]


def _distances_to_channels(points: torch.Tensor, points_sq: torch.Tensor, table: torch.Tensor, picks: torch.Tensor
                           ) -> torch.Tensor:
    """Squared distances B x C between every channel and channel ``picks`` (B x 1) of the same sample."""
    picked, picked_sq = _gather_rows(table, picks)
    offset = (points_sq + picked_sq).unsqueeze(-1)
    return torch.baddbmm(offset, points, picked.transpose(1, 2), alpha=-2).squeeze(-1)


def _kmeans_plus_plus(points: torch.Tensor, points_sq: torch.Tensor, table: torch.Tensor, num_groups: int,
                      generator) -> torch.Tensor:
    """k-means++ seeding: indices B x K of distinct channels, each drawn with probability ~ D^2."""
    batch, num_channels, _ = points.shape
    first = torch.randint(num_channels, (batch, 1), device=points.device, generator=generator)
    # one uniform per draw and row, in the order the draws consume them
    uniforms = torch.rand(num_groups - 1, batch, device=points.device, generator=generator).t()
    picks = [first]
    # weights = D^2 to the nearest chosen channel, floored so that rows of identical channels stay
    # drawable; chosen channels get exactly 0, so they are never drawn again
    floor = points.new_full((), _DRAW_FLOOR)
    weights = _distances_to_channels(points, points_sq, table, first).clamp_min(floor).scatter(1, first, 0.0)
    for draw in range(num_groups - 1):
        # inverse-CDF draw; right=True never lands on a zero-weight (chosen) channel
        cdf = weights.cumsum(1)
        target = uniforms[:, draw:draw + 1] * cdf[:, -1:]
        pick = torch.searchsorted(cdf, target, right=True).clamp_max_(num_channels - 1)
        picks.append(pick)
        if draw < num_groups - 2:
            # min(max(D^2, floor), weights) in one op: where the weight is 0 (chosen) the upper bound wins
            dist = _distances_to_channels(points, points_sq, table, pick)
            weights = dist.clamp(floor, weights).scatter_(1, pick, 0.0)
    return torch.cat(picks, dim=1)


def _snap_to_channels(points: torch.Tensor, points_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Replace each centre by its nearest channel, greedily in centre order so the K channels stay distinct.

    Centre k takes its nearest channel not taken by centres 0..k-1: each choice depends on the earlier
    ones, so the K choices are made in turn (an ``argmin`` and a ``scatter_`` each) on one K x C
    distance table. No formulation with fewer ops gives the same picks cheaply: enumerating the K!
    orders of choice needs each centre's K nearest channels in the order ``argmin`` visits them (ties,
    e.g. dead all-zero channels, to the lowest index), which ``topk`` does not give and a stable sort
    of the table costs more than the whole grouping on a CPU.
    """
    num_centres = centres.shape[1]
    # |c|^2 is the same for every channel, so it is dropped; K x C layout keeps each row contiguous
    dist = torch.baddbmm(points_sq.unsqueeze(1), centres, points.transpose(1, 2), alpha=-2)
    picks = []
    for k in range(num_centres):
        pick = dist[:, k:k + 1].argmin(2, keepdim=True)  # B x 1 x 1
        picks.append(pick)
        if k < num_centres - 1:  # the picked channel is out of reach for the later centres
            dist.scatter_(2, pick.expand(-1, num_centres, -1), float('inf'))
    return torch.cat(picks, dim=1).squeeze(-1)


def _nearest_centre(points: torch.Tensor, centres: torch.Tensor, centres_sq: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centre, B x C; ``|x|^2`` is the same for every centre, so it is dropped."""
    return torch.baddbmm(centres_sq.unsqueeze(1), points, centres.transpose(1, 2), alpha=-2).argmin(-1)


def _lloyd_totals(flat_points: torch.Tensor, ones: torch.Tensor, flat_ids: torch.Tensor, zero_sums: torch.Tensor,
                  zero_counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-group sums B x K x N and member counts B x K x 1: ``index_add`` onto zeros of those shapes, with
    flat group ids b * K + k (no ``bincount``, which reads its range back to the host on CUDA). The counts
    are a separate 1-D ``index_add``: a ones column beside the points would save that op, but ``index_add``
    over rows of N + 1 values made the whole grouping about 20% slower on a CPU."""
    sums = zero_sums.view(-1, flat_points.shape[-1]).index_add(0, flat_ids, flat_points)
    counts = zero_counts.view(-1).index_add(0, flat_ids, ones)
    return sums.view_as(zero_sums), counts.view_as(zero_counts)


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
    otherwise centres are plain means and an empty group keeps its previous centre. Distances are float64
    with autocast off, so the ids are the same under float16/bfloat16 autocast and TF32 as in float32.

    Args:
        features: Feature map B x C x ... of any floating dtype (no gradient flows through grouping).
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
    _check_groups(num_groups, features.shape[1])
    with torch.autocast(features.device.type, enabled=False):
        # non-finite activations (a diverged step) must not crash the sampler; the loss reports them
        points = torch.nan_to_num(
            features.detach().flatten(2).to(_distance_dtype(features.device)), nan=0.0, posinf=0.0, neginf=0.0)
        batch, num_channels, length = points.shape
        points_sq = points.pow(2).sum(-1)
        table = torch.cat([points, points_sq.unsqueeze(-1)], -1)
        centres, centres_sq = _gather_rows(table, _kmeans_plus_plus(points, points_sq, table, num_groups, generator))
        # flat group index b * K + k: one index_add for the whole batch
        offsets = torch.arange(0, batch * num_groups, num_groups, device=points.device).unsqueeze(1)
        flat_points, ones = points.reshape(-1, length), points.new_ones(batch * num_channels)
        zero_sums, zero_counts = points.new_zeros(batch, num_groups, length), points.new_zeros(batch, num_groups, 1)
        for _ in range(iters):
            flat_ids = (_nearest_centre(points, centres, centres_sq) + offsets).view(-1)
            sums, counts = _lloyd_totals(flat_points, ones, flat_ids, zero_sums, zero_counts)
            # an empty group's 0 / 0 is discarded by the where: it keeps its previous centre
            means = torch.where(counts > 0, sums / counts, centres)
            if medoid:
                centres, centres_sq = _gather_rows(table, _snap_to_channels(points, points_sq, means))
            else:
                centres, centres_sq = means, means.pow(2).sum(-1)
        return _nearest_centre(points, centres, centres_sq)


def _group_sums(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sum B x C x N values over the channels of each group: B x K x N (differentiable in ``values``)."""
    batch, _, length = values.shape
    index = group_ids.unsqueeze(-1).expand(-1, -1, length)
    return values.new_zeros(batch, num_groups, length).scatter_add(1, index, values)


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
    ``I_l <= 0`` get 1 (left alone); every channel takes its group's map. Computed in float32 with
    autocast off whatever the input dtype, as a constant. A positive scale of ``grads`` (e.g. a loss
    scale) cancels in the standardisation, so it does not change the mask.

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
    with torch.autocast(features.device.type, enabled=False):
        acts = features.detach().flatten(2).float()
        weights = grads.detach().flatten(2).float().mean(-1)
        importance = weights.new_zeros(group_ids.shape[0], num_groups).scatter_add_(1, group_ids, weights)
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
    Gradients flow into ``features``; computed and returned in float32 with autocast off (raw dot
    products of post-ReLU maps pass float16's 65504 on large maps). The K(K-1)/2 dot products are
    summed elementwise products, not a matmul, so no TF32 setting lowers them.

    Args:
        features: Feature map B x C x ...
        group_ids: B x C group ids.
        num_groups: Number of groups; inferred from ``group_ids`` (a device read) when omitted.
        reduction: ``'mean'`` over the batch, or ``'none'`` for the per-sample values (B,).
    """
    if reduction not in ('mean', 'none'):
        raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'.")
    num_groups = _resolve_num_groups(group_ids, num_groups)
    with torch.autocast(features.device.type, enabled=False):
        acts = features.flatten(2).float()
        ones = torch.ones(group_ids.shape, dtype=torch.float32, device=group_ids.device)
        counts = ones.new_zeros(group_ids.shape[0], num_groups).scatter_add_(1, group_ids, ones)
        means = _group_sums(acts, group_ids, num_groups) / counts.clamp_min(1).unsqueeze(-1)
        first, second = torch.triu_indices(num_groups, num_groups, 1, device=group_ids.device)
        dots = (means[:, first] * means[:, second]).sum(-1).abs()  # B x pairs
        present = counts > 0
        pairs = (present[:, first] & present[:, second]).float()
        per_sample = (dots * pairs).sum(1) / pairs.sum(1).clamp_min(1)
        return per_sample.mean() if reduction == 'mean' else per_sample
