"""The training step runs through TorchRec's TrainPipelineSparseDist: both embedding modules really are
pipelined (the model stays traceable around them), and the pipelined step trains exactly like the plain
one, evaluation passes in between included."""

import json

from test_config import QUICKSTART
from torchrec.distributed.embedding import ShardedEmbeddingCollection
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection

from longer_train.config import load_config
from longer_train.distributed.process_group import destroy_distributed
from longer_train.trainer import Trainer


def _train(tiny_data, tmp_path, pipeline: bool) -> tuple[Trainer, list[dict]]:
    cfg = load_config(QUICKSTART, [
        f"data.root={tiny_data}", "data.max_len=64", "data.batch_size=64", "data.num_workers=0",
        "train.max_steps=6", "train.eval_every=3", "train.log_every=1", "train.checkpoint=false",
        f"train.output_dir={tmp_path}", f"train.run_name=pipeline-{pipeline}", f"train.runs_table={tmp_path}/r.jsonl",
        "logging.wandb_mode=disabled", "train.progress_bar=false", f"parallel.pipeline={str(pipeline).lower()}",
    ])
    try:
        trainer = Trainer(cfg)
        trainer.train()
    finally:
        destroy_distributed()
    lines = (tmp_path / f"pipeline-{pipeline}" / "metrics.jsonl").read_text().splitlines()
    measured = ("train/samples_per_s", "train/peak_memory_gib", "train/mfu")  # wall-clock and memory, not results
    return trainer, [{k: v for k, v in json.loads(line).items() if k not in measured} for line in lines]


def test_embeddings_are_pipelined_and_train_like_the_plain_step(tiny_data, tmp_path):
    pipelined, with_pipeline = _train(tiny_data, tmp_path, pipeline=True)
    kinds = {type(m) for m in pipelined.pipeline._pipelined_modules}
    assert kinds == {ShardedEmbeddingCollection, ShardedEmbeddingBagCollection}
    _, plain = _train(tiny_data, tmp_path, pipeline=False)
    assert with_pipeline == plain  # bitwise: losses, grad norms, validation after steps 3 and 6, test
    assert any("valid/auc" in row for row in plain)
