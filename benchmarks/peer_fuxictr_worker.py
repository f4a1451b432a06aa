"""Runs inside FuxiCTR's own environment (benchmarks/peer_fuxictr.py creates it and calls this): trains the DIN that
the fuxictr package ships (`model_zoo.LongCTR.DIN`, its class defaults) with FuxiCTR's own loader and training loop
on an export made by peer_fuxictr.py, and saves its predicted probabilities on the validation and test rows (file
order), the training time and the parameter counts. Imports only FuxiCTR and its dependencies, never this project.

    python peer_fuxictr_worker.py --data DIR --out predictions.npz --checkpoints DIR --epochs 1 --batch-size 64 \
        --max-len 256 --seed 0
"""

import argparse
import inspect
import os
import time

import numpy as np
from fuxictr.features import FeatureMap
from fuxictr.pytorch.torch_utils import seed_everything
from model_zoo.LongCTR import DIN
from model_zoo.LongCTR.longctr_dataloader import LongCTRDataLoader


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--data", "--out", "--checkpoints"):
        parser.add_argument(name, required=True)
    for name in ("--epochs", "--batch-size", "--max-len", "--seed"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    seed_everything(seed=args.seed)
    feature_map = FeatureMap(args.data.rstrip("/").split("/")[-1], args.data)
    embedding_dim = inspect.signature(DIN.__init__).parameters["embedding_dim"].default  # the class's default
    feature_map.load(f"{args.data}/feature_map.json", {"embedding_dim": embedding_dim})
    model = DIN(feature_map, gpu=-1, optimizer="adam", loss="binary_crossentropy", metrics=["AUC", "logloss"],
                model_root=args.checkpoints, verbose=0)
    os.makedirs(model.model_dir, exist_ok=True)  # where fit keeps its best weights (it does not create it)
    loader = lambda split, shuffle: LongCTRDataLoader(
        feature_map, f"{args.data}/{split}.parquet", f"{args.data}/user_info.parquet",
        f"{args.data}/item_info.parquet", batch_size=args.batch_size, shuffle=shuffle, num_workers=0,
        max_len=args.max_len)
    train, valid, test = loader("train", True), loader("valid", False), loader("test", False)
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, validation_data=valid)
    seconds = time.perf_counter() - start
    embedding = sum(p.numel() for name, p in model.named_parameters() if name.startswith("embedding_layer."))
    total = sum(p.numel() for p in model.parameters())
    np.savez(args.out, valid=model.predict(valid), test=model.predict(test), seconds=seconds,
             steps=len(train) * args.epochs, dense_params=total - embedding, embedding_params=embedding)


if __name__ == "__main__":
    main()
