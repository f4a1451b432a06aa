"""Serving: a checkpoint's scorer for every model (`scorer.py`), the HTTP service and exported programs.

Models are read through their scoring interface (models/user_state.py): `prefill` encodes a user once,
`score` scores many candidates against that state."""
