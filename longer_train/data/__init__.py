"""Training data: the Parquet sample schema, its validation, and the synthetic dataset generator."""
