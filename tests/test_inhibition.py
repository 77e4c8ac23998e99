"""The batched TENET maths against plain per-sample, per-group loops."""
import math

import pytest
import torch

from timm_tenet.inhibition import group_channels, orthogonal_loss, reversed_mask


def slow_reversed_mask(features, grads, group_ids):
    """DESIGN.md section 1, steps 2-3, written as directly as possible in float64."""
    batch, channels = group_ids.shape
    mask = torch.ones(features.shape, dtype=torch.float64)
    for b in range(batch):
        for group in range(int(group_ids[b].max()) + 1):
            members = [c for c in range(channels) if int(group_ids[b, c]) == group]
            if not members:
                continue
            weights = [float(grads[b, c].double().mean()) for c in members]
            if sum(weights) <= 0:
                continue
            group_map = sum(w * features[b, c].double() for w, c in zip(weights, members))
            mean = group_map.mean()
            std = math.sqrt(float(((group_map - mean) ** 2).mean()))
            z = (group_map - mean) / (std + 1e-8)
            for c in members:
                mask[b, c] = 1.0 / (1.0 + torch.exp(z))
    return mask


def slow_orthogonal_loss(features, group_ids):
    total = 0.0
    batch, channels = group_ids.shape
    for b in range(batch):
        means = []
        for group in range(int(group_ids[b].max()) + 1):
            members = [c for c in range(channels) if int(group_ids[b, c]) == group]
            if members:
                means.append(torch.stack([features[b, c].double().flatten() for c in members]).mean(0))
        pairs = [abs(float(means[i] @ means[j])) for i in range(len(means)) for j in range(i + 1, len(means))]
        total += sum(pairs) / max(len(pairs), 1)
    return total / batch


def planted_clusters(seed, batch=8, per_cluster=10, spread=0.3):
    """Channels drawn around 3 random centres, shuffled; returns features B x C x 7 x 7 and true labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(batch, 3, 49, generator=gen)
    labels = torch.arange(3).repeat_interleave(per_cluster)
    points = centres[:, labels] + spread * torch.randn(batch, 3 * per_cluster, 49, generator=gen)
    order = torch.randperm(3 * per_cluster, generator=gen)
    return points[:, order].reshape(batch, -1, 7, 7), labels[order]


def same_partition(ids, labels):
    return bool(((ids[:, None] == ids[None]) == (labels[:, None] == labels[None])).all())


@pytest.fixture
def feature_batch():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 12, 5, 4, generator=gen).relu()
    grads = torch.randn(3, 12, 5, 4, generator=gen)
    group_ids = torch.randint(0, 4, (3, 12), generator=gen)
    group_ids[0, :3] = torch.tensor([0, 1, 2])  # sample 0 leaves group 3 empty
    group_ids[0, 3:] = 0
    return features, grads, group_ids


def test_reversed_mask_matches_per_sample_loop(feature_batch):
    features, grads, group_ids = feature_batch
    fast = reversed_mask(features, grads, group_ids, num_groups=4)
    assert fast.dtype == torch.float32 and fast.shape == features.shape
    torch.testing.assert_close(fast.double(), slow_reversed_mask(features, grads, group_ids), atol=1e-5, rtol=1e-5)


def test_reversed_mask_leaves_groups_with_nonpositive_importance_at_one(feature_batch):
    features, grads, group_ids = feature_batch
    mask = reversed_mask(features, -grads.abs(), group_ids, num_groups=4)
    assert torch.equal(mask, torch.ones_like(mask))


def test_reversed_mask_is_float32_for_half_inputs(feature_batch):
    features, grads, group_ids = feature_batch
    mask = reversed_mask(features.bfloat16(), grads.bfloat16(), group_ids)
    assert mask.dtype == torch.float32
    expected = slow_reversed_mask(features.bfloat16().float(), grads.bfloat16().float(), group_ids)
    torch.testing.assert_close(mask.double(), expected, atol=1e-5, rtol=1e-5)


def test_reversed_mask_inhibits_the_most_discriminative_position():
    features = torch.zeros(1, 2, 3, 3)
    features[0, :, 1, 1] = 5.0  # one hot spot shared by both channels
    features[0, :, 0, 0] = 1.0
    mask = reversed_mask(features, torch.ones_like(features), torch.zeros(1, 2, dtype=torch.long), num_groups=2)
    assert mask[0, 0, 1, 1] < 0.1 and mask[0, 0, 1, 1] == mask.min()
    assert mask[0, 0, 2, 2] > 0.5


def test_orthogonal_loss_matches_per_sample_loop(feature_batch):
    features, _, group_ids = feature_batch
    fast = orthogonal_loss(features, group_ids, num_groups=4)
    assert fast.item() == pytest.approx(slow_orthogonal_loss(features, group_ids), rel=1e-5)
    per_sample = orthogonal_loss(features, group_ids, num_groups=4, reduction='none')
    assert per_sample.shape == (3,) and per_sample.mean().item() == pytest.approx(fast.item(), rel=1e-6)


def test_orthogonal_loss_is_zero_with_a_single_nonempty_group_and_has_gradients():
    features = torch.randn(2, 6, 3, 3, requires_grad=True)
    group_ids = torch.zeros(2, 6, dtype=torch.long)
    assert orthogonal_loss(features, group_ids, num_groups=3).item() == 0.0
    group_ids[:, 3:] = 1
    orthogonal_loss(features, group_ids, num_groups=3).backward()
    assert features.grad.abs().sum() > 0


@pytest.mark.parametrize('medoid', [True, False])
def test_group_channels_partitions_every_channel(medoid):
    features = torch.randn(4, 32, 6, 6)
    ids = group_channels(features, 5, medoid=medoid, generator=torch.Generator().manual_seed(1))
    assert ids.shape == (4, 32) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < 5
    if medoid:  # every centre is a real channel, so no group is empty
        assert all(len(torch.unique(row)) == 5 for row in ids)


def test_group_channels_is_reproducible_with_a_generator():
    features = torch.randn(4, 32, 6, 6)
    first = group_channels(features, 4, generator=torch.Generator().manual_seed(7))
    again = group_channels(features, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)


@pytest.mark.parametrize('medoid', [True, False])
def test_group_channels_finds_planted_clusters_for_most_seeds(medoid):
    recovered = total = 0
    for seed in range(40):
        features, labels = planted_clusters(seed)
        ids = group_channels(features, 3, medoid=medoid, generator=torch.Generator().manual_seed(seed))
        recovered += sum(same_partition(row, labels) for row in ids)
        total += len(ids)
    # with a uniformly random start instead of k-means++ seeding, about two thirds are recovered here
    assert recovered / total >= 0.9


def test_group_channels_handles_identical_channels():
    features = torch.ones(2, 8, 3, 3)
    ids = group_channels(features, 3)
    assert ids.shape == (2, 8) and ids.max() < 3


@pytest.mark.parametrize('num_groups, message', [(1, 'at least 2'), (9, 'more than the 8 channels')])
def test_group_channels_rejects_bad_group_counts(num_groups, message):
    with pytest.raises(ValueError, match=message):
        group_channels(torch.randn(1, 8, 2, 2), num_groups)


# --- precision: autocast and TF32 never reach the maths -------------------------------------------

def post_relu_map(seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(4, 64, 14, 14, generator=gen)).relu()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_group_ids_under_cpu_autocast_equal_float32(dtype):
    features = post_relu_map()
    expected = group_channels(features, 6, generator=torch.Generator().manual_seed(3))
    with torch.autocast('cpu', dtype=dtype):
        ids = group_channels(features, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, expected)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_orthogonal_loss_under_autocast_is_float32_and_does_not_overflow(dtype):
    features = post_relu_map(scale=40.0).requires_grad_(True)  # group-mean Gram entries near 1e5 > 65504
    group_ids = torch.arange(64).remainder(6).expand(4, -1)
    means = torch.stack([features.detach()[:, group_ids[0] == g].mean(1).flatten(1) for g in range(6)], 1)
    assert torch.isinf(torch.bmm(means.half(), means.half().transpose(1, 2))).any()  # a float16 Gram overflows
    expected = orthogonal_loss(features, group_ids, num_groups=6)
    with torch.autocast('cpu', dtype=dtype):
        loss = orthogonal_loss(features, group_ids, num_groups=6)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == expected.item()
    loss.backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reversed_mask_under_autocast_equals_float32(feature_batch, dtype):
    features, grads, group_ids = feature_batch
    expected = reversed_mask(features, grads, group_ids, num_groups=4)
    with torch.autocast('cpu', dtype=dtype):
        mask = reversed_mask(features, grads, group_ids, num_groups=4)
    assert mask.dtype == torch.float32 and torch.equal(mask, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='TF32 exists on CUDA only')
def test_group_ids_on_cuda_do_not_depend_on_tf32(monkeypatch):
    features = post_relu_map().cuda()
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    expected = group_channels(features, 6, generator=torch.Generator('cuda').manual_seed(3))
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', True)
    with torch.autocast('cuda', dtype=torch.float16):
        ids = group_channels(features, 6, generator=torch.Generator('cuda').manual_seed(3))
    assert torch.equal(ids, expected)


# --- launches: the greedy snapping is exact and the grouping is one graph -------------------------

def slow_snap(points, centres):
    """Centre k takes its nearest channel not taken by centres 0..k-1, one sample at a time."""
    picks = torch.empty(centres.shape[:2], dtype=torch.long)
    for b in range(points.shape[0]):
        taken = set()
        for k in range(centres.shape[1]):
            dist = ((points[b].double() - centres[b, k].double()) ** 2).sum(-1)
            order = [int(c) for c in dist.argsort(stable=True)]
            picks[b, k] = next(c for c in order if c not in taken)
            taken.add(int(picks[b, k]))
    return picks


def test_snapping_keeps_centres_distinct_in_centre_order():
    from timm_tenet.inhibition import _snap_to_channels
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(3, 20, 8, generator=gen)
    centres = points[:, [4, 4, 9, 4, 11]] + 0.01 * torch.randn(3, 5, 8, generator=gen)  # three centres want channel 4
    picks = _snap_to_channels(points, points.pow(2).sum(-1), centres)
    assert torch.equal(picks, slow_snap(points, centres))
    assert all(len(set(row.tolist())) == 5 for row in picks)


def test_group_channels_compiles_to_one_graph():
    features = post_relu_map()
    explanation = torch._dynamo.explain(group_channels)(features, 6, iters=2)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
    torch.manual_seed(5)
    expected = group_channels(features, 6, iters=2)
    torch.manual_seed(5)
    compiled = torch.compile(group_channels, backend='aot_eager', fullgraph=True)(features, 6, iters=2)
    assert torch.equal(compiled, expected)


def grouping_before_op_folding(features, num_groups, medoid, generator, iters=10):
    """``group_channels`` as it was before its ops were folded (commit 6e956c8): separate gathers for a
    channel and its norm, ``index_add`` for sums and counts, ``minimum`` of clamped distances."""
    from timm_tenet.inhibition import _nearest_centre, _snap_to_channels
    points = torch.nan_to_num(features.flatten(2).float(), nan=0.0, posinf=0.0, neginf=0.0)
    batch, channels, length = points.shape
    points_sq = points.pow(2).sum(-1)

    def distances(picks):
        picked = points.gather(1, picks.unsqueeze(-1).expand(-1, -1, length))
        offset = (points_sq + points_sq.gather(1, picks)).unsqueeze(-1)
        return torch.baddbmm(offset, points, picked.transpose(1, 2), alpha=-2).squeeze(-1)

    picks = torch.randint(channels, (batch, 1), generator=generator)
    uniforms = torch.rand(num_groups - 1, batch, generator=generator).t()
    weights = distances(picks).clamp_min(1e-30).scatter(1, picks, 0.0)
    for draw in range(num_groups - 1):
        cdf = weights.cumsum(1)
        pick = torch.searchsorted(cdf, uniforms[:, draw:draw + 1] * cdf[:, -1:], right=True).clamp_max_(channels - 1)
        picks = torch.cat([picks, pick], dim=1)
        weights = torch.minimum(weights, distances(pick).clamp_min_(1e-30)).scatter_(1, pick, 0.0)
    centres = points.gather(1, picks.unsqueeze(-1).expand(-1, -1, length))
    centres_sq = points_sq.gather(1, picks)
    offsets = torch.arange(0, batch * num_groups, num_groups).unsqueeze(1)
    flat_points, ones = points.reshape(-1, length), points.new_ones(batch * channels)
    for _ in range(iters):
        flat_ids = (_nearest_centre(points, centres, centres_sq) + offsets).view(-1)
        sums = flat_points.new_zeros(batch * num_groups, length).index_add_(0, flat_ids, flat_points)
        counts = ones.new_zeros(batch * num_groups).index_add_(0, flat_ids, ones).unsqueeze(1)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), centres.view(-1, length)).view(centres.shape)
        if medoid:
            snapped = _snap_to_channels(points, points_sq, means)
            centres = points.gather(1, snapped.unsqueeze(-1).expand(-1, -1, length))
            centres_sq = points_sq.gather(1, snapped)
        else:
            centres, centres_sq = means, means.pow(2).sum(-1)
    return _nearest_centre(points, centres, centres_sq)


@pytest.mark.parametrize('medoid', [True, False])
def test_folded_grouping_gives_the_ids_of_the_grouping_before(medoid):
    for seed, shape, num_groups in [(0, (4, 64, 14, 14), 6), (1, (8, 30, 7, 7), 3), (2, (2, 512, 4, 4), 9)]:
        features = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).relu()
        features[:, ::5] = 0  # dead channels: exact distance ties, resolved to the lowest index
        features[:, 1] = features[:, 2]  # a duplicated channel
        ids = group_channels(features, num_groups, medoid=medoid, generator=torch.Generator().manual_seed(seed))
        expected = grouping_before_op_folding(features, num_groups, medoid, torch.Generator().manual_seed(seed))
        assert torch.equal(ids, expected)


def test_group_channels_takes_non_contiguous_maps():
    maps = torch.randn(2, 49, 32, generator=torch.Generator().manual_seed(0)).relu().transpose(1, 2)  # ViT tokens
    ids = group_channels(maps, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, group_channels(maps.contiguous(), 4, generator=torch.Generator().manual_seed(1)))
