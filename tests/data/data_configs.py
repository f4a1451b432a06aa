"""The feature config the data tests share: the sample schema's columns with tables of given sizes."""

from longer_train.config import DataConfig, FeatureConfig, TableConfig

BASE_FEATURES = [
    FeatureConfig("item_id", "candidate", "item"),
    FeatureConfig("category_id", "candidate", "category"),
    FeatureConfig("hist_item_id", "sequence", "item"),
    FeatureConfig("hist_category_id", "sequence", "category"),
    FeatureConfig("hist_action", "sequence", "action"),
    FeatureConfig("user_id", "user", "user"),
]


def data_config(vocab: dict[str, int], extra: list[FeatureConfig] = ()) -> DataConfig:
    """DataConfig over the base columns plus `extra`; `vocab` maps table name -> num_embeddings."""
    return DataConfig(
        tables={name: TableConfig(num_embeddings=n, embedding_dim=4) for name, n in vocab.items()},
        features=[*BASE_FEATURES, *extra],
    )
