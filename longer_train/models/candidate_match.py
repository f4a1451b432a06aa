"""How similar each behaviour is to its row's candidate, in the shared embedding space.

A candidate feature and a sequence feature that look up the same table (`item_id` / `hist_item_id`,
`category_id` / `hist_category_id`) give the same vector for the same id, so "this behaviour is the
candidate's item / category" is visible from the first step — before any projection has learned to align
the candidate token with the behaviour tokens (they come from different MLPs). The sequence models take
these similarities where the candidate meets the history (docs/model.md, "Candidate match"): DIN's
attention scores and pooled features, TWIN's target-attention scores (search and attention alike), LONGER's
candidate row in the cross-causal layer and HSTU's candidate row in every layer.

The similarity is the cosine, so it does not depend on the tables' scale (TorchRec's default init
U(±sqrt(1/rows)) makes item vectors ~100x shorter than category vectors; a dot product would start near 0).
It is bilinear in the unit vectors, so the history side can be summed per merged group and cached once per
user: a candidate's similarity to a group of K events is one dot product with the group's sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MatchPair:
    """A candidate feature and a sequence feature that share a table: their slices of the concatenated
    candidate and event embeddings."""

    candidate_offset: int
    event_offset: int
    width: int


def unit_pairs(x: Tensor, pairs: tuple[MatchPair, ...], side: str, eps: float = 1e-8) -> Tensor:
    """The pairs' slices of `x` [..., D] (`side`: "event" or "candidate" offsets), each scaled to unit length,
    concatenated -> [..., sum of widths]: per slice `F.normalize(slice, dim=-1, eps=eps)` (norms below eps count
    as eps), with its gradient written by hand (`_UnitColumns`)."""
    spans = tuple((p.event_offset if side == "event" else p.candidate_offset, p.width) for p in pairs)
    if torch.is_grad_enabled() and x.requires_grad:
        return _UnitColumns.apply(x, spans, eps)
    return _unit_columns(x, spans, eps)[0]


def _unit_columns(x: Tensor, spans: tuple[tuple[int, int], ...], eps: float) -> tuple[Tensor, list, list]:
    """The column slices x[..., start: start + width] scaled to unit length and concatenated; per slice its
    1 / max(norm, eps) [..., 1] and whether its norm is below eps [..., 1]."""
    blocks = [x[..., start: start + width] for start, width in spans]
    squares = [(b * b).sum(-1, keepdim=True) for b in blocks]
    inverse = [torch.rsqrt(q.clamp_min(eps * eps)) for q in squares]
    return torch.cat([b * i for b, i in zip(blocks, inverse)], dim=-1), inverse, [q < eps * eps for q in squares]


class _UnitColumns(torch.autograd.Function):
    """`_unit_columns` with its gradient in closed form: for y = x / |x|, dx = (g - y <g, y>) / |x| (and g / eps
    where the norm is below eps), written straight into the slices of x's gradient. Autograd's own backward of
    the product / sum / rsqrt / clamp chain, then of the slicing and the concatenation, reads and writes the
    events' [N, w] blocks several more times; this runs on every event of every batch."""

    @staticmethod
    def forward(ctx, x: Tensor, spans: tuple[tuple[int, int], ...], eps: float) -> Tensor:
        out, inverse, below = _unit_columns(x, spans, eps)
        ctx.save_for_backward(out, *inverse, *below)
        ctx.spans, ctx.shape = spans, x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        n = len(ctx.spans)
        out, inverse, below = ctx.saved_tensors[0], ctx.saved_tensors[1: n + 1], ctx.saved_tensors[n + 1:]
        grad_x = grad.new_zeros(ctx.shape)
        offset = 0
        for (start, width), inv, small in zip(ctx.spans, inverse, below):
            y, g = out[..., offset: offset + width], grad[..., offset: offset + width]
            dot = (g * y).sum(-1, keepdim=True).masked_fill_(small, 0.0)
            # accumulated, not assigned: two pairs may read the same columns
            grad_x[..., start: start + width].addcmul_(torch.addcmul(g, y, dot, value=-1.0), inv)
            offset += width
        return grad_x, None, None


def pair_similarity(history: Tensor, candidate: Tensor, pairs: tuple[MatchPair, ...]) -> Tensor:
    """Per pair, the dot product of `unit_pairs` vectors: history [..., W], candidate [..., W] -> [..., P].

    history [N, W] with candidate [N, W] gives each event's cosine to its candidate; history [B, L', W]
    (unit vectors summed per merged group) with candidate [B, C, W] gives [B, C, L', P] by broadcasting
    through `group_similarity`."""
    out, start = [], 0
    for p in pairs:
        out.append((history[..., start: start + p.width] * candidate[..., start: start + p.width]).sum(-1))
        start += p.width
    return torch.stack(out, dim=-1)


def group_similarity(groups: Tensor, candidates: Tensor, pairs: tuple[MatchPair, ...]) -> Tensor:
    """Similarity of each candidate to each merged group, per pair: the sum over the group's events of their
    cosine to the candidate. groups [B, L', W] (unit vectors summed per group), candidates [B, C, W] unit
    vectors -> [B, C, L', P]."""
    out, start = [], 0
    for p in pairs:
        g = groups[..., start: start + p.width]  # [B, L', w]
        c = candidates[..., start: start + p.width]  # [B, C, w]
        if c.shape[1] == 1:  # one candidate per row (training): a broadcast product, not B matrix-vector
            out.append((g * c).sum(-1).unsqueeze(1))  # products, whose backward CPU bmm runs row by row
        else:
            out.append(torch.matmul(c, g.transpose(1, 2)))  # [B, C, L']
        start += p.width
    return torch.stack(out, dim=-1)


# initial weight of a similarity in an attention score: a behaviour (or merged group) holding one event of the
# candidate's item or category starts ~e^MATCH_BIAS_INIT times as attended as one holding none
MATCH_BIAS_INIT = 1.0


def match_weight(heads: int, pairs: int) -> torch.nn.Parameter:
    """The learned weight of each pair's similarity in each head's attention score [H, P]."""
    return torch.nn.Parameter(torch.full((heads, pairs), MATCH_BIAS_INIT))


def match_bias(match: Tensor, weight: Tensor) -> Tensor:
    """The attention-score bias of a candidate for a key, per head: Σ_p w_{h,p}·s_p. match [..., P] (the
    candidate's similarities to the key), weight [H, P] -> [..., H]."""
    return match @ weight.T


def attended_similarity(weights: Tensor, match: Tensor) -> Tensor:
    """Per head and pair, the similarity the candidates attended to: attention weights [B, H, C, L] of the L
    keys, match [B, C, L, P] -> [B, C, H * P]."""
    return torch.einsum("bhcl,bclp->bchp", weights.to(match.dtype), match).flatten(2)
