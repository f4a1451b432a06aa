"""The trainable ranking model: TorchRec embeddings (sparse) + a dense network + BCE loss.

`forward(batch)` returns `(loss, (loss, logits, labels))`, the contract of TorchRec's train pipelines.
The batch's KeyedJaggedTensors go straight into the embedding modules (no edits first), which keeps the
model traceable so the embedding input distribution can be pipelined.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from ..config import Config
from ..data.batch import Batch
from .baselines import DIN, NoSequence, SumPooling
from .contract import DenseModel
from .flops import longer_flops, transformer_config
from .hstu import HSTU
from .inputs import DenseDims, DenseInputs
from .longer import Longer
from .sparse_arch import SparseArch
from .twin import TWIN


class RankingModel(nn.Module):
    def __init__(self, sparse: SparseArch, dense: DenseModel) -> None:
        super().__init__()
        self.sparse = sparse
        self.dense = dense

    def forward(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        events, lengths, candidate, user = self.sparse(batch.per_id, batch.pooled)
        inputs = DenseInputs(events, lengths, batch.time_diff, candidate, user, batch.dense, pad_to=batch.longest,
                             host_lengths=batch.history_lengths)
        logits = self.dense(inputs)
        loss = binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)


def dense_dims(cfg: Config, sparse: SparseArch) -> DenseDims:
    layout = sparse.layout
    return DenseDims(
        event=layout.event_dim, candidate=layout.candidate_dim, user=layout.user_dim,
        dense=len(layout.dense), max_len=cfg.data.max_len, match_pairs=layout.match_pairs,
    )


DENSE_MODELS = {
    "longer": Longer, "no_sequence": NoSequence, "sum_pooling": SumPooling, "din": DIN, "twin": TWIN, "hstu": HSTU,
}


def build_dense(cfg: Config, sparse: SparseArch) -> DenseModel:
    """The dense network of `model.name` over these embedding tables' widths."""
    return DENSE_MODELS[cfg.model.name](cfg.model, dense_dims(cfg, sparse))


def comparison_flops(cfg: Config, dense: DenseModel, lengths: list[int]) -> tuple[str, int] | None:
    """The FLOPs the paper sets this model's beside, with what they are of: for LONGER the Transformer of the
    same token width and depth, no merge and every event a query (configs/experiments/transformer.yaml); None
    for a model the paper compares with nothing."""
    if cfg.model.name != "longer":
        return None
    reference = longer_flops(transformer_config(cfg.model, cfg.data.max_len), dense.dims, lengths)
    return "the Transformer of this d and depth, no merge and every event a query", reference


def build_model(cfg: Config) -> RankingModel:
    """Embedding tables on the meta device (materialised by sharding) + the dense network on CPU."""
    sparse = SparseArch(cfg.data)
    return RankingModel(sparse, build_dense(cfg, sparse))
