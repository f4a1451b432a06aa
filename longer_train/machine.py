"""What a config asks of this machine, checked once per entry point after the config is resolved (`resolve`):
the device it names exists, the Triton and TensorBoard packages it needs are installed, the embedding tables
(with their sparse-optimizer state) and the dense model fit in the job's memory. Kept apart from `config.py`,
whose schema and validation are pure (no torch, no machine): a checkpoint's config is not checked against the
machine that serves it, and `longer-train --print-config` shows a config without one.

Entry points: the `Trainer` (training: `resolve`, then `check_dense_fits` on its device) and `longer-train
--print-config`; `longer-sweep` only fills the sizes (each of its runs is a `longer-train` of its own)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .config import Config, ConfigError
from .data.vocab import resolve_num_embeddings


def resolve(cfg: Config) -> Config:
    """Fill what the config leaves to the data (`num_embeddings: auto` from the dataset's meta.json), then check
    the machine with every size known. Idempotent; returns `cfg`, changed in place."""
    resolve_num_embeddings(cfg.data)
    check_machine(cfg)
    return cfg


# fused sparse-optimizer state, in floats per embedding row of `cols` columns
OPTIMIZER_STATE_FLOATS = {
    "rowwise_adagrad": lambda cols: 1, "adagrad": lambda cols: cols, "sgd": lambda cols: 0,
    "adam": lambda cols: 2 * cols,
}


def table_bytes(rows: int, cols: int, sparse_optimizer: str) -> int:
    """fp32 bytes of `rows` x `cols` embedding rows with their fused optimizer state."""
    return 4 * rows * (cols + OPTIMIZER_STATE_FLOATS[sparse_optimizer](cols))


def host_memory() -> int:
    """Bytes of memory of this machine, or of this container when its cgroup sets a smaller limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def check_machine(cfg: Config) -> None:
    """The device the config names exists here, and the embedding tables fit in the memory of the job's
    processes (WORLD_SIZE / LOCAL_WORLD_SIZE from torchrun; one process without it; `check_table_memory`)."""
    device, local_rank = cfg.train.device, int(os.environ.get("LOCAL_RANK", "0"))
    gpus = 0
    if device in ("cuda", "auto"):
        import torch  # only here: --help and the config's own checks run without it

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device == "cuda" and not gpus:
            raise ConfigError(
                "config key 'train.device' is 'cuda' but this machine has no usable CUDA device "
                "(torch.cuda.is_available() is False); allowed here: auto, cpu"
            )
        if gpus and local_rank >= gpus:
            raise ConfigError(
                f"config key 'train.device' ({device}): this process is local rank {local_rank} but the machine "
                f"has {gpus} CUDA device(s); start at most {gpus} processes per node, or use train.device=cpu"
            )
    if cfg.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'logging.tensorboard' is true but the tensorboard package is not installed: "
                          "pip install tensorboard (make setup installs it), or set logging.tensorboard=false")
    if cfg.model.attention_impl == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError("config key 'model.attention_impl' is 'triton' but the triton package is not installed; "
                              "use auto (Triton where it runs, the PyTorch reference elsewhere) or reference")
        if not gpus and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("config key 'model.attention_impl' is 'triton' but this process has no CUDA device; "
                              "use auto or reference here, or set TRITON_INTERPRET=1 for the (slow) Triton "
                              "interpreter")
    check_table_memory(cfg)


def check_table_memory(cfg: Config) -> None:
    """The embedding tables with their sparse-optimizer state fit in the memory of the job's processes: GPU
    memory for `fused` tables on CUDA, host memory for the rest, nothing for SSD-backed `key_value` ones.
    Tables whose size is still `auto` (no data to resolve them from) are left out."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = 0
    if cfg.train.device in ("cuda", "auto"):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    nodes = max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    available = {"host": host_memory() * nodes}
    if gpus:
        import torch

        available["GPU"] = torch.cuda.get_device_properties(min(local_rank, gpus - 1)).total_memory * world
    optimizer = cfg.optim.sparse_optimizer
    tables: dict[str, list[tuple[int, str]]] = {"host": [], "GPU": []}
    for name, table in cfg.data.tables.items():
        if not isinstance(table.num_embeddings, int) or table.compute_kernel == "key_value":  # SSD-backed
            continue
        where = "GPU" if gpus and table.compute_kernel == "fused" else "host"
        tables[where].append((table_bytes(table.num_embeddings, table.embedding_dim, optimizer), name))
    for where, sized in tables.items():
        need = sum(size for size, _ in sized)
        if sized and need > available[where]:
            size, name = max(sized)
            table = cfg.data.tables[name]
            rows = max(0, available[where] - (need - size)) // table_bytes(1, table.embedding_dim, optimizer)
            raise ConfigError(
                f"config key 'data.tables.{name}.num_embeddings' ({table.num_embeddings}): the embedding tables "
                f"take {need / 2**30:.1f} GiB (fp32 weights + {optimizer} state) but the {world} process(es) of "
                f"this job have {available[where] / 2**30:.1f} GiB of {where} memory; with the other tables as "
                f"they are it must be in [1, {rows}]"
            )


def check_dense_fits(cfg: Config, device) -> None:
    """The dense model's weights, gradients and AdamW moments (16 bytes a parameter) fit in this process's
    memory on `device` (a torch.device), counted on a model built on the meta device; a model too large is a
    config error naming the keys that size it, not an allocator traceback."""
    import torch

    from .models.ranking import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg).dense.parameters())
    if device.type == "cuda":
        available, where = torch.cuda.get_device_properties(device).total_memory, "GPU"
    else:
        available, where = host_memory() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), "host"
    need = 16 * params
    if need > available:
        raise ConfigError(
            f"model.name={cfg.model.name}: the dense model has {params / 1e6:,.0f}M parameters, {need / 2**30:,.1f} "
            f"GiB with their gradients and AdamW state, more than this process's {available / 2**30:,.1f} GiB of "
            f"{where} memory; lower model.token_dim, model.merge_k, model.merge_proj_dim, model.ffn_mult or "
            "model.head_hidden"
        )
