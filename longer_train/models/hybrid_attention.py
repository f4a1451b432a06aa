"""LONGER's hybrid attention layers.

Layout: [merged sequence tokens (oldest..newest, left-padded) | CLS | user | candidate]. The ordinary causal
mask over that layout is the paper's mask: sequence tokens see only older ones, user-side globals see the
whole sequence but not the candidate, the candidate sees everything — so every sequence-side and user-side
state is candidate-independent (what makes KV-cached serving exact). Training without the candidate match runs
that mask as it stands, the candidate the last key and query of each layer's one causal call. KV-cached scoring
(many candidates per user) and the candidate match (a score bias on the candidate's row) compute it in two
parts: the user side ([sequence | CLS | user]) under the causal mask, then the candidate's row, which attends
to every user-side token of its layer and to itself (`CausalBlock.candidate_rows`); tests/models check that
both give the same scores.

- Layer 1, cross-causal (`HybridAttention.cross`): keys/values are all tokens; queries are k sequence queries
  chosen by `model.query_selection` (below) + the m globals; output k + m tokens. A query sits at a key
  position and sees the keys up to it: the globals at their own positions after the sequence, a sequence
  query at the merged token it was taken from.
- Layers 2..N+1, self-causal (`HybridAttention.self_layers`): over those k + m tokens, in that order.

Query selection (the paper's Table 2), per row over its valid merged tokens, k = min(num_queries, L'):
- `recent` (default): the k newest; these are the last k positions, so the cross layer is bottom-right
  aligned causal attention (the Triton kernel's layout);
- `uniform`: k tokens spread evenly, newest included: the newest token of each of k equal strides;
- `recent_uniform`: ceil(k/2) newest, the rest spread the same way over the older valid tokens;
- `learnable`: k learned query vectors (all num_queries of them, whatever L'), each seeing the whole
  sequence (they sit at the newest merged position); padding only in a row with an empty history.
A row with at most k valid tokens uses every one of them under the three sequence rules (its padded query
slots come first, as for `recent`). Positions are a function of the row's length only, so training,
evaluation and KV-cached serving pick the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import QUERY_RULES
from ..kernels import candidate_attention, hybrid_attention
from .blocks import FeedForward, make_norm, merge_heads, split_heads
from .candidate_match import attended_similarity, match_bias, match_weight


class CausalBlock(nn.Module):
    """Pre-norm attention + FFN with residuals; causal attention of query tokens over key tokens (`forward`),
    then the candidates' rows (`candidate_rows`): each candidate attends to the layer's keys and to itself, as
    the last token of the causal layout would, so every sequence-side and user-side state is
    candidate-independent by construction, and training and KV-cached scoring run the same code for it.

    With `match_pairs` > 0 (the cross-causal layer under the candidate match) the candidate also scores each
    merged token by its similarity to the token's events in the shared embedding space
    (models/candidate_match.py): a learned weight per head and pair, added to its attention scores; with
    `match_readout` the similarity it attended to (per head and pair) is returned for the head. Training runs
    the candidate rows inside `forward`, so the compute policies that wrap it (bf16, recomputation, FSDP2;
    distributed/parallelize.py) cover them too."""

    def __init__(
        self, dim: int, head_dim: int, ffn_mult: int, norm: str, dropout: float, attention_impl: str,
        match_pairs: int = 0, match_readout: bool = True,
    ) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.attention_impl = attention_impl
        self.match_weight = match_weight(self.heads, match_pairs) if match_pairs else None
        self.match_readout = match_readout
        self.norm1 = make_norm(norm, dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = make_norm(norm, dim)
        self.ffn = FeedForward(dim, ffn_mult, dropout)
        self.dropout = nn.Dropout(dropout)

    def _keys_values(self, h: Tensor, shape: torch.Size, live: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, L, dh] (shape = (B, L); what a KV cache keeps) of the normed tokens h: [B, L, D],
        or [n, D] those at the flat positions `live` (`live_positions`), the others' keys and values being 0."""
        k, v = self.kv(h).chunk(2, dim=-1)
        return to_heads(k, shape, live, self.heads), to_heads(v, shape, live, self.heads)

    def _queries(self, h: Tensor, shape: torch.Size, live: Tensor | None) -> Tensor:
        return to_heads(self.q(h), shape, live, self.heads)

    def finish(self, x: Tensor, attn: Tensor, live: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """Residual + FFN after attention: query tokens [B, n, D], attention output [B, H, n, dh]. The tokens off
        the flat positions `live` (padding; None: none) keep their input state and cost nothing. `rows`: x's
        tokens at `live` (`gather_rows`), when the caller has gathered them already."""
        rows = gather_rows(x, live) if rows is None else rows
        y = rows + self.dropout(self.out(gather_rows(merge_heads(attn), live)))
        y = y + self.ffn(self.norm2(y))
        n = x.shape[1]  # written by (row, slot), not into a flattened copy: the output is no view (FSDP2 hooks it)
        return y if live is None else x.index_put((live // n, live % n), y)

    def forward(
        self, x: Tensor, num_pad: Tensor, x_q: Tensor | None = None, q_pos: Tensor | None = None,
        keep_kv: list | None = None, candidate: Tensor | None = None, match: Tensor | None = None,
        live_keys: Tensor | None = None, live_queries: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Keys/values from tokens x [B, Lk, D] (num_pad [B] leading padded); queries from x_q [B, n_q, D]
        (default x: self-causal) at key positions q_pos [B, n_q] (default: the last n_q positions). Returns
        [B, n_q, D], then for `candidate` [B, C, D] (None: none) the candidates' states [B, C, D] and their
        match readout [B, C, H * P] (`candidate_rows`; None without them). `keep_kv`, when given, receives
        (K, V, num_pad) (KV-cached serving). `match` [B, C, L', P]: the candidates' similarity to the L' sequence
        tokens first in x. `live_keys` / `live_queries` (`live_positions`; None: all): the tokens of x / x_q that
        are not padding; only those are projected and go through the FFN (padded keys are masked, padded
        queries' outputs unread: they keep their input state). `kv`: the keys and values of x, when the caller
        has them (`HybridAttention.forward`'s `cross_kv`)."""
        if kv is None or x_q is None:  # x's normed tokens: for its keys and values, or as the queries
            rows = gather_rows(x, live_keys)
            h = self.norm1(rows)
        k, v = self._keys_values(h, x.shape[:2], live_keys) if kv is None else kv
        if keep_kv is not None:
            keep_kv.append((k, v, num_pad))
        # the query tokens gathered once, for their projection and for the residual in `finish` (a second gather
        # would be a second index_select forward, and backward a second scatter and a sum of the two gradients)
        if x_q is None:  # self-attention: the queries come from the same normed tokens
            x_q, live_queries, q_rows = x, live_keys, rows
        else:
            q_rows = gather_rows(x_q, live_queries)
            h = self.norm1(q_rows)
        q = self._queries(h, x_q.shape[:2], live_queries)
        if candidate is not None:  # K and V made contiguous once: the queries' and the candidates' attention read
            k, v = k.contiguous(), v.contiguous()  # them (a matmul over strided heads would copy them per use)
        attn = hybrid_attention(q, k, v, num_pad, impl=self.attention_impl, q_pos=q_pos)  # [B, H, n_q, dh]
        out = self.finish(x_q, attn, live_queries, q_rows)
        if candidate is None:
            return out, None, None
        return out, *self.candidate_rows(candidate, k, v, num_pad, match)

    def candidate_rows(
        self, candidate: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, match: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """The layer for C candidates per row [B, C, D] (independent of each other) over their row's keys and
        values [B, H, Lk, dh] (the L' merged tokens then the user globals; `num_pad` [B] leading padded) and
        their own. Returns their states [B, C, D] and, with `match` [B, C, L', P] (None: no bias) and the
        readout on, the readout [B, C, H * P]: per head and pair, the similarity weighted by the candidate's
        attention (else None)."""
        h = self.norm1(candidate)
        shape = candidate.shape[:2]
        q, (k_self, v_self) = self._queries(h, shape, None), self._keys_values(h, shape, None)
        bias = readout = None
        if match is not None and self.match_weight is not None:
            bias = match_bias(match, self.match_weight).permute(0, 3, 1, 2)  # [B, H, C, L']
            bias = torch.nn.functional.pad(bias, (0, k_cache.shape[2] - match.shape[2]))  # the user globals: none
        with_probs = bias is not None and self.match_readout
        attn = candidate_attention(q, k_cache, v_cache, num_pad, k_self, v_self, self.attention_impl, bias=bias,
                                   return_probs=with_probs)
        if with_probs:
            attn, probs = attn
            readout = attended_similarity(probs[..., : match.shape[2]], match)
        return self.finish(candidate, attn), readout


class HybridAttention(nn.Module):
    """Layer 1 cross-causal (k sequence queries + the user-side globals as queries), then N self-causal layers;
    in every layer the candidate (the last global) attends to that layer's tokens and to itself
    (`CausalBlock.candidate_rows`); with `match_pairs` > 0 the cross-causal layer's candidate row takes the
    candidate match."""

    def __init__(
        self, dim: int, num_queries: int, num_self_layers: int, head_dim: int, ffn_mult: int, norm: str,
        dropout: float, attention_impl: str, match_pairs: int = 0, match_readout: bool = True,
        query_selection: str = "recent", length_chunks: int = 1,
    ) -> None:
        super().__init__()
        if query_selection not in QUERY_RULES:
            raise ValueError(f"unknown query selection {query_selection!r}; expected one of {list(QUERY_RULES)}")
        self.num_queries = num_queries
        self.length_chunks = length_chunks
        self.attention_impl = attention_impl
        self.query_selection = query_selection
        self.learned_queries = (
            nn.Parameter(torch.randn(num_queries, dim) * 0.02) if query_selection == "learnable" else None
        )
        make = lambda **match: CausalBlock(dim, head_dim, ffn_mult, norm, dropout, attention_impl, **match)
        self.cross = make(match_pairs=match_pairs, match_readout=match_readout)
        self.self_layers = nn.ModuleList(make() for _ in range(num_self_layers))

    def forward(
        self, seq: Tensor, globals_: Tensor, num_pad: Tensor, candidate: Tensor | None = None,
        match: Tensor | None = None, keep_kv: list | None = None, host_groups: Tensor | None = None,
        cross_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """seq [B, L', D] left-padded merged tokens with `num_pad` [B] padded ones; globals_ [B, m, D] the
        user-side globals; candidate [B, C, D] the candidate tokens (None: the user side alone, as KV-cached
        serving's prefill runs it); match [B, C, L', P]: the candidates' similarity to each merged token (None:
        off).

        Returns the states after each layer, [B, k + m, D]: the k sequence queries (`select_queries`) then the
        globals; the candidates' states after each layer [B, C, D] (empty without candidates); and their match
        readout [B, C, H * P] (None when `match` is None or the readout is off). `keep_kv`, when given, receives
        each layer's (K, V, num_pad) (KV-cached serving). `host_groups`: the valid merged tokens per row [B] on
        the host (= L' - num_pad, counted without a device sync), when known: the layers then project and
        transform the valid tokens only (padded keys are masked anyway; padded query slots keep their input
        state, which nothing reads), and with `length_chunks` > 1 run on groups of rows of similar length, each
        trimmed to its longest (`length_chunks`, `_chunked`): the same result, less attention over padding.
        `cross_kv`: the cross layer's keys and values of [seq | globals] [B, H, L' + m, dh], when the caller has
        them (serving's append: `Longer.append`); they are not computed again.
        """
        if keep_kv is None and cross_kv is None and host_groups is not None and self.length_chunks > 1:
            order = torch.argsort(host_groups, stable=True)
            groups = host_groups[order]
            min_len = max(1, min(self.num_queries, seq.shape[1]))
            chunks = length_chunks(groups.tolist(), seq.shape[1], min_len, globals_.shape[1], self.length_chunks)
            if chunks is not None:
                return self._chunked(chunks, order, seq, globals_, num_pad, candidate, match, groups)
        return self._layers(seq, globals_, num_pad, candidate, match, keep_kv, host_groups, cross_kv)

    def _chunked(
        self, chunks: list[tuple[int, int, int]], order: Tensor, seq: Tensor, globals_: Tensor, num_pad: Tensor,
        candidate: Tensor | None, match: Tensor | None, groups: Tensor,
    ) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """`forward` with the rows in `order` (ascending valid length; `groups`: theirs, in that order) cut into
        `chunks` (r0, r1, trim): rows order[r0:r1] with their first `trim` merged positions (padding in every one
        of them) left out. Each tensor is gathered once for all chunks (one index_select: its backward is one
        scatter, not a full-size gradient per chunk) and split; the outputs are put back in the rows' order."""
        b, seq_len = seq.shape[:2]
        rows = [r1 - r0 for r0, r1, _ in chunks]
        kept = [(r1 - r0) * (seq_len - trim) for r0, r1, trim in chunks]
        flat = torch.cat([  # flat (row, position) indices of every chunk's kept positions, chunk by chunk
            (order[r0:r1, None] * seq_len + torch.arange(trim, seq_len)).flatten() for r0, r1, trim in chunks
        ]).to(seq.device)
        order_dev = order.to(seq.device)

        def pieces(t: Tensor) -> list[Tensor]:  # [B, L', *] -> per chunk [rows, L' - trim, *]
            parts = t.reshape(b * seq_len, *t.shape[2:]).index_select(0, flat).split(kept)
            return [p.view(n, -1, *t.shape[2:]) for p, n in zip(parts, rows)]

        def by_row(t: Tensor | None) -> list:  # [B, *] -> per chunk [rows, *]
            return [None] * len(chunks) if t is None else list(t.index_select(0, order_dev).split(rows))

        seqs = pieces(seq)
        # match [B, C, L', P]: the merged position is dim 2 (a view with dim 1 = C = 1, as LONGER has it)
        matches = [None] * len(chunks) if match is None else [
            p.transpose(1, 2) for p in pieces(match.transpose(1, 2))
        ]
        outs = [
            self._layers(s, g, p - trim, c, mt, None, h)
            for (_, _, trim), s, g, p, c, mt, h in zip(
                chunks, seqs, by_row(globals_), by_row(num_pad), by_row(candidate), matches, groups.split(rows),
            )
        ]
        back = torch.empty_like(order).index_copy_(0, order, torch.arange(b)).to(seq.device)  # inverse of order
        unsort = lambda parts: torch.cat(parts).index_select(0, back)  # noqa: E731
        states = [unsort(layer) for layer in zip(*(o[0] for o in outs))]
        candidates = [unsort(layer) for layer in zip(*(o[1] for o in outs))]
        readout = None if outs[0][2] is None else unsort([o[2] for o in outs])
        return states, candidates, readout

    def _layers(
        self, seq: Tensor, globals_: Tensor, num_pad: Tensor, candidate: Tensor | None, match: Tensor | None,
        keep_kv: list | None, host_groups: Tensor | None, cross_kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """`forward` on the whole batch at once.

        One candidate per row and no score bias on its row (training and evaluation without the candidate match):
        the candidate is the last token of the layout, the last key and the last query of every layer, in the same
        attention call as the user side (causal: nothing before it sees it), instead of a row of its own over
        copies of every layer's keys and values (`CausalBlock.candidate_rows`, what KV-cached scoring and the
        candidate match run; the same result, tests/models)."""
        fold = candidate is not None and candidate.shape[1] == 1 and match is None and keep_kv is None
        if fold:
            globals_ = torch.cat([globals_, candidate], dim=1)
            candidate = None
        b, seq_len, m = seq.shape[0], seq.shape[1], globals_.shape[1]
        seq_q, q_pos, q_pad = self.select_queries(seq, num_pad)
        if q_pos is not None:  # the globals sit after the sequence
            globals_pos = torch.arange(seq_len, seq_len + m, device=seq.device).expand(q_pos.shape[0], m)
            q_pos = torch.cat([q_pos, globals_pos], dim=1)
        tokens = torch.cat([seq, globals_], dim=1)
        # every position a query (the Transformer baseline: num_queries >= L'): the cross layer is a self-causal
        # layer over the tokens, which are then normed, gathered and projected once
        every_position = q_pos is None and seq_q.shape[1] == seq_len
        x_q = None if every_position else torch.cat([seq_q, globals_], dim=1)
        live_keys = live_queries = None
        if host_groups is not None:  # the globals are never padding
            live_keys = live_positions(num_pad, seq_len + m, int(host_groups.sum()) + b * m)
            if every_position:  # q_pad = num_pad
                live_queries = live_keys
            else:
                queries = x_q.shape[1] * b - int(self.query_padding(seq_len - host_groups, seq_len).sum())
                live_queries = live_positions(q_pad, x_q.shape[1], queries)
        x, candidate, readout = self.cross(tokens, num_pad, x_q, q_pos, keep_kv, candidate, match, live_keys,
                                           live_queries, kv=cross_kv)
        states, candidates = [x], [] if candidate is None else [candidate]
        for layer in self.self_layers:
            x, candidate, _ = layer(x, q_pad, keep_kv=keep_kv, candidate=candidate, live_keys=live_queries,
                                    live_queries=live_queries)
            states.append(x)
            candidates += [] if candidate is None else [candidate]
        if fold:  # the candidate's row, last in every layer's states
            candidates = [x[:, -1:] for x in states]
            states = [x[:, :-1] for x in states]
        return states, candidates, readout

    def extend(
        self, seq: Tensor, globals_: Tensor, cross_kv: tuple[Tensor, Tensor], outputs: list[Tensor],
        self_kv: list[tuple[Tensor, Tensor]], kept: int, old_len: int,
    ) -> tuple[list[Tensor], list]:
        """The layers of one row (no padding) whose first `kept` merged tokens, of `old_len` before, are unchanged
        (serving's append: `Longer.append`; recent rule): seq [1, L', D] the merged tokens now, globals_
        [1, m, D], cross_kv the cross layer's keys and values of [seq | globals]; `outputs` each layer's states
        and `self_kv` each self layer's keys and values (over [window | globals]) for the old tokens.
        Returns what `forward` does with `keep_kv`: each layer's states [1, k + m, D] and (K, V, num_pad).

        Causal attention makes most of the old work reusable: a cross-layer state at position p < kept saw
        merged tokens <= p only, so it stands; while the query window (the k newest positions) starts where it
        did, each self layer's states and keys at those positions stand too, and only the newer positions and
        the globals run (one event filling the newest group: one position). When the window moves, the self
        layers run on the whole window again (k + m tokens)."""
        seq_len, m = seq.shape[1], globals_.shape[1]
        k = self.effective_queries(seq_len)
        start, old_start = seq_len - k, max(old_len - self.num_queries, 0)
        first = max(kept, start)  # the oldest window position whose state changes
        no_pad = torch.zeros(1, dtype=torch.long, device=seq.device)
        keep: list = []
        x_q = torch.cat([seq[:, first:], globals_], dim=1)
        q_pos = torch.arange(first, seq_len + m, device=seq.device)[None]
        new, _, _ = self.cross(x_q, no_pad, x_q, q_pos, keep, kv=cross_kv)
        x = torch.cat([outputs[0][:, start - old_start : first - old_start], new], dim=1)  # [1, k + m, D]
        states = [x]
        for j, layer in enumerate(self.self_layers, start=1):
            if start == old_start:  # window positions before `first`: their keys, values and states stand
                r = first - start
                fresh = x[:, r:]
                k_new, v_new = layer._keys_values(layer.norm1(fresh), fresh.shape[:2], None)
                kv = (torch.cat([self_kv[j - 1][0][:, :, :r], k_new], dim=2),
                      torch.cat([self_kv[j - 1][1][:, :, :r], v_new], dim=2))
                q_pos = torch.arange(r, k + m, device=seq.device)[None]
                y, _, _ = layer(fresh, no_pad, fresh, q_pos, keep, kv=kv)
                x = torch.cat([outputs[j][:, :r], y], dim=1)
            else:
                x, _, _ = layer(x, no_pad, keep_kv=keep)
            states.append(x)
        return states, keep

    def effective_queries(self, seq_len: int) -> int:
        """k actually used for a batch whose merged sequences have length seq_len."""
        return self.num_queries if self.learned_queries is not None else min(self.num_queries, seq_len)

    def select_queries(self, seq: Tensor, num_pad: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """The sequence queries of `model.query_selection`: their tokens [B, k, D], their key positions [B, k]
        (None for `recent`: the last k positions, bottom-right aligned) and their padded count [B] (padded
        query slots come first)."""
        b, seq_len = seq.shape[:2]
        k = self.effective_queries(seq_len)
        q_pad = self.query_padding(num_pad, seq_len)
        if self.learned_queries is not None:
            positions = torch.full((b, k), seq_len - 1, dtype=torch.long, device=seq.device)
            return self.learned_queries.unsqueeze(0).expand(b, -1, -1), positions, q_pad
        if self.query_selection == "recent":
            return seq[:, seq_len - k :], None, q_pad
        positions = query_positions(self.query_selection, num_pad, seq_len, k)
        return seq.gather(1, positions[..., None].expand(-1, -1, seq.shape[2])), positions, q_pad

    def query_padding(self, num_pad: Tensor, seq_len: int) -> Tensor:
        """Padded slots [B] among the k sequence queries of rows with `num_pad` padded merged tokens."""
        k = self.effective_queries(seq_len)
        if self.learned_queries is not None:  # every learned query is valid unless the history is empty
            return torch.where(num_pad >= seq_len, k, 0)
        return query_padding(num_pad, seq_len, k)


# a further chunk must save this share of the whole batch's attention work (rows x keys) to be worth its fixed
# cost (every op of the layers once more, forward and backward). Set, not tuned: with it the quickstart's uniform
# lengths take two chunks at no measured cost (benchmarks/results/train_step_length_chunks_cpu.md), a long-tailed
# batch up to length_chunks
CHUNK_MIN_SAVING = 0.1


def length_chunks(
    groups: list[int], seq_len: int, min_len: int, globals_: int, max_chunks: int,
) -> list[tuple[int, int, int]] | None:
    """How to cut a batch whose rows hold `groups` valid merged tokens (ascending, each row left-padded to
    seq_len) into at most `max_chunks` runs of consecutive rows, each trimmed to its longest row (at least
    `min_len` positions: every chunk keeps the same number of queries): (r0, r1, trim) per chunk, trim being the
    leading positions dropped; None when one chunk is best. Cost of a chunk: rows x (kept positions + the
    `globals_` global tokens), the keys its attention runs over, plus CHUNK_MIN_SAVING of the whole batch's;
    chosen exactly by dynamic programming over cut points at 1/16ths of the rows."""
    b = len(groups)
    if b < 2 or max_chunks < 2:
        return None
    keys = [max(g, min_len) + globals_ for g in groups]  # a chunk ending at row r - 1 runs over keys[r - 1]
    cuts = sorted({round(b * j / 16) for j in range(17)})
    fixed = CHUNK_MIN_SAVING * b * (seq_len + globals_)
    whole = b * (seq_len + globals_) + fixed
    best = {0: (0.0, [])}  # cut index -> (cost, chunks) over the rows before it, for the current chunk count
    found = (whole, None)
    for _ in range(max_chunks):
        step = {}
        for j in range(1, len(cuts)):
            options = [
                (cost + (cuts[j] - cuts[i]) * keys[cuts[j] - 1] + fixed, parts + [(cuts[i], cuts[j])])
                for i, (cost, parts) in best.items() if i < j
            ]
            if options:
                step[j] = min(options, key=lambda o: o[0])
        best = step
        last = best.get(len(cuts) - 1)
        if last is not None and last[0] < found[0] - 1e-9:
            found = last
    if found[1] is None or len(found[1]) < 2:
        return None
    return [(r0, r1, seq_len - (keys[r1 - 1] - globals_)) for r0, r1 in found[1]]


def gather_rows(x: Tensor, live: Tensor | None) -> Tensor:
    """The tokens of x [B, L, D] at the flat positions `live` (into B * L) -> [n, D]; None: x itself."""
    return x if live is None else x.reshape(-1, x.shape[-1]).index_select(0, live)


def to_heads(t: Tensor, shape: torch.Size, live: Tensor | None, heads: int) -> Tensor:
    """Per-token vectors -> [B, H, L, dh] (shape = (B, L)): t [B, L, H * dh] when `live` is None (a view), else
    the live tokens' [n, H * dh], written head-major into zeros (contiguous, as attention reads them: no copy
    there)."""
    if live is None:
        return split_heads(t, heads)
    b, length = shape
    out = t.new_zeros((b, heads, length, t.shape[-1] // heads))
    out[live // length, :, live % length] = t.view(t.shape[0], heads, -1)
    return out


def live_positions(num_pad: Tensor, length: int, count: int) -> Tensor | None:
    """Flat indices (into B * length) of the positions after each row's num_pad [B] leading padded ones, of
    which there are `count` (known on the host: no device sync); None when none is padding (nothing to skip)."""
    if count == num_pad.shape[0] * length:
        return None
    keep = torch.arange(length, device=num_pad.device)[None, :] >= num_pad[:, None]
    return torch.nonzero_static(keep.flatten(), size=count).squeeze(1)


def query_positions(rule: str, num_pad: Tensor, seq_len: int, k: int) -> Tensor:
    """Key positions [B, k] (ascending) of the k sequence queries of rule recent | uniform | recent_uniform,
    for rows of seq_len merged tokens whose first num_pad [B] are padding; k <= seq_len. A row with at most k
    valid tokens takes the last k positions (all its valid tokens, padding first) whatever the rule."""
    slot = torch.arange(k, device=num_pad.device)[None, :]  # [1, k]
    recent = (seq_len - k + slot).expand(num_pad.shape[0], k)
    if rule == "recent":
        return recent
    first = num_pad.long()[:, None]  # first valid position [B, 1]
    valid = seq_len - first  # [B, 1]
    if rule == "uniform":  # the newest token of each of k equal strides of the valid tokens
        spread = first + (slot + 1) * valid // k - 1
    elif rule == "recent_uniform":  # ceil(k/2) newest (= the recent slots), the rest over the older tokens
        newest = -(-k // 2)
        older = k - newest
        spread = torch.where(slot < older, first + (slot + 1) * (valid - newest) // max(older, 1) - 1, recent)
    else:
        raise ValueError(f"query_positions: unknown rule {rule!r}")
    return torch.where(valid <= k, recent, spread)


def query_padding(num_pad: Tensor, seq_len: int, k: int) -> Tensor:
    """Padded tokens among k sequence queries taken from rows of seq_len merged tokens (num_pad padded) when
    each row takes its valid tokens first: max(k - valid, 0)."""
    return (num_pad - (seq_len - k)).clamp(min=0)
