"""Dataset production: the synthetic generators (`synthetic`, `synthetic_match`), the preparation of public
datasets (`prepare`: the pipeline, over the datasets' `sources` and the text reader `text`; the dataset `card`),
the sequence-store writer (`writer`) and the `longer-data` CLI (`cli`). Training and serving read datasets through
`longer_train.data` (the read path), which imports nothing from here."""
