"""Models: the dense LONGER network and its building blocks are plain torch (no torchrec, no parallelism);
`ranking.py` joins them with the TorchRec embedding tables."""
