"""The read path of training data: the Parquet sample schema and its validation (`schema`), the sequence store's
event log (`store`), row groups and the sharded, resumable loader (`loader`, `row_groups`), batches (`batch`),
vocabulary sizes and out-of-vocabulary ids (`vocab`, `oov`). Datasets are made by `longer_train.datasets`."""
