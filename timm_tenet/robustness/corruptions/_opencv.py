"""The OpenCV 8-bit image operations that ImageNet-C's spatter chains, as batched tensor ops.

Spatter draws its water drops' rims from ``cv2.Canny``, ``cv2.distanceTransform``, ``cv2.equalizeHist`` and
two box filters. Each is reproduced here with OpenCV's integer rules (fixed-point direction tests, the
chamfer mask's costs, histogram rounding) so that, given the same random field, the drops come out the same.
Images are B x H x W integer tensors holding 0..255 unless said otherwise.
"""
import torch
import torch.nn.functional as F


_TG22 = 13573  # round(tan(22.5 deg) * 2^15): Canny's fixed-point test for the gradient direction

# cv2.distanceTransform(DIST_L2, 5): a 5 x 5 chamfer mask, costs 1 (axial), 1.4 (diagonal), 2.1969 (knight)
# summed in float32; each move (row, column step) also counts negated.
_CHAMFER_MOVES = ((1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2), (2, -1), (1, -2))
_CHAMFER_COSTS = (1.0, 1.0, 1.4, 1.4, 2.1969, 2.1969, 2.1969, 2.1969)


def _shift(x: torch.Tensor, dr: int, dc: int, fill: float) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + dr, j + dc]``, ``fill`` where that falls outside."""
    h, w = x.shape[-2:]
    k = max(abs(dr), abs(dc))
    padded = F.pad(x, (k, k, k, k), value=fill)
    return padded[..., k + dr:k + dr + h, k + dc:k + dc + w]


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``cv2.Canny(image, low, high)`` (aperture 3, L1 gradient) as a bool edge map.

    Sobel gradients with replicated borders; non-maximum suppression along the direction quantised by
    OpenCV's fixed-point tangent test, with its asymmetric ties (``>`` one side, ``>=`` the other) and zero
    magnitude outside the image; hysteresis grows the strong edges (``> high``) through 8-connected weak
    ones (``> low``) until nothing changes.
    """
    h, w = image.shape[-2:]
    padded = F.pad(image[:, None].float(), (1, 1, 1, 1), mode='replicate')[:, 0].long()

    def at(dr: int, dc: int) -> torch.Tensor:
        return padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    dx = at(-1, 1) + 2 * at(0, 1) + at(1, 1) - at(-1, -1) - 2 * at(0, -1) - at(1, -1)
    dy = at(1, -1) + 2 * at(1, 0) + at(1, 1) - at(-1, -1) - 2 * at(-1, 0) - at(-1, 1)
    magnitude = dx.abs() + dy.abs()
    ax, ay = dx.abs(), dy.abs() << 15
    tg22 = ax * _TG22
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg22 + (ax << 16))
    diagonal = ~horizontal & ~vertical

    def neighbour(dr: int, dc: int) -> torch.Tensor:
        return _shift(magnitude, dr, dc, 0)

    peak = horizontal & (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1))
    peak |= vertical & (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0))
    opposite_signs = (dx ^ dy) < 0  # the gradient runs along the anti-diagonal
    anti = (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1))
    main = (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1))
    peak |= diagonal & torch.where(opposite_signs, anti, main)
    weak = peak & (magnitude > int(low))
    edges = weak & (magnitude > int(high))
    while True:
        grown = _dilate3(edges) & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _dilate3(mask: torch.Tensor) -> torch.Tensor:
    """3 x 3 dilation (8-neighbourhood) of a B x H x W bool mask, rows then columns."""
    rows = mask.clone()
    rows[:, 1:] |= mask[:, :-1]
    rows[:, :-1] |= mask[:, 1:]
    out = rows.clone()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out


def chamfer_distance(zero: torch.Tensor, limit: float) -> torch.Tensor:
    """``cv2.distanceTransform(src, cv2.DIST_L2, 5)`` where ``src == 0`` at ``zero``, exact up to ``limit``.

    The distance is the cheapest path of mask moves from a zero pixel. Instead of OpenCV's two raster scans
    (sequential), each move's ray is closed in turn (a min-plus closure along one direction, doubling its
    reach: 1, 2, 4, ... repeats, as many as a path of cost ``limit`` can use), which every ordering of a
    path's moves allows; distances beyond ``limit`` come out above it. Float32, B x H x W.
    """
    h, w = zero.shape[-2:]
    dist = torch.where(zero, 0.0, float(limit) + 1)
    costs = torch.tensor(_CHAMFER_COSTS, dtype=torch.float32, device=zero.device)
    for (dr, dc), cost, cost_value in zip(_CHAMFER_MOVES, costs, _CHAMFER_COSTS):
        for sign in (1, -1):
            reach = 1
            while reach <= limit / cost_value:
                r, c = sign * reach * dr, sign * reach * dc
                if abs(r) < h and abs(c) < w:
                    # dist[i, j] = min(dist[i, j], dist[i - r, j - c] + reach * cost), inside the image
                    target = dist[:, max(r, 0):h + min(r, 0), max(c, 0):w + min(c, 0)]
                    source = dist[:, max(-r, 0):h + min(-r, 0), max(-c, 0):w + min(-c, 0)] + cost * reach
                    torch.minimum(target, source, out=target)
                reach *= 2
    return dist


def box_sum(image: torch.Tensor) -> torch.Tensor:
    """The 3 x 3 sums of ``cv2.blur(image, (3, 3))`` (OpenCV's reflect-101 border), added in float64 as OpenCV
    does for float images."""
    h, w = image.shape[-2:]
    padded = F.pad(image[:, None].double(), (1, 1, 1, 1), mode='reflect')[:, 0]  # one pixel: reflect-101
    rows = padded[:, :, :w] + padded[:, :, 1:w + 1] + padded[:, :, 2:]
    return rows[:, :h] + rows[:, 1:h + 1] + rows[:, 2:]


def equalize_hist(image: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist``: the cumulative histogram above the darkest level, scaled to 0..255 in float32."""
    b = image.shape[0]
    flat = image.reshape(b, -1)
    hist = torch.zeros(b, 256, dtype=torch.long, device=image.device).scatter_add_(1, flat, torch.ones_like(flat))
    darkest = (hist > 0).long().argmax(dim=1, keepdim=True)
    at_darkest = hist.gather(1, darkest)
    scale = torch.tensor(255.0, device=image.device) / (flat.shape[1] - at_darkest).clamp(min=1).float()
    lut = torch.round((hist.cumsum(1) - at_darkest).float() * scale).clamp(0, 255).long()
    lut = torch.where(torch.arange(256, device=image.device) <= darkest, 0, lut)
    lut = torch.where(at_darkest == flat.shape[1], darkest, lut)  # a flat image keeps its level
    return lut.gather(1, flat).view_as(image)


def filter2d_u8(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``cv2.filter2D(image, cv2.CV_8U, kernel)`` with a 3 x 3 integer kernel: correlation, reflect-101, saturated."""
    h, w = image.shape[-2:]
    padded = F.pad(image[:, None].float(), (1, 1, 1, 1), mode='reflect')[:, 0]
    out = sum(float(kernel[i, j]) * padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3) if kernel[i, j])
    return out.clamp(0, 255).long()
