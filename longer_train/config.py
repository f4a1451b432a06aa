"""Typed experiment configuration: YAML (OmegaConf) + `key=value` overrides -> validated dataclasses.

Every key is checked against the dataclass that owns it: an unknown or mistyped key fails with a
`ConfigError` that names the full key, what was expected and, for unknown keys, the allowed keys. Every
numeric key declares its allowed range beside its default (`_num`), checked when the config is loaded; so
are a few things of the machine (the device exists, the embedding tables fit in its memory).
New knobs go here, never into new command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from .errors import InputError, one_line

if TYPE_CHECKING:  # omegaconf and yaml are imported where YAML is read: the config dataclasses (and so the
    # dense models that take them) import with torch alone, e.g. on a GPU machine without our dependencies
    from omegaconf import DictConfig

INT64_MAX = 2**63 - 1


class ConfigError(InputError):
    """A config key is unknown, missing or has a value of the wrong type, outside its choices or its range."""


def _choice(default: Any, choices: tuple) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric key: low/high (None: unbounded), each end open or closed."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def phrase(self) -> str:
        """How an error says it: '>= 1', 'in [0, 1)'."""
        return str(self) if self.high is None else f"in {self}"

    def __str__(self) -> str:
        fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        return f"{'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}"


def _num(default: Any = None, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
         high_open: bool = False, factory: Any = None) -> Any:
    """A numeric field (or a list of numbers: each element) with its allowed range."""
    meta = {"bound": Bound(low, high, low_open, high_open)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------------
# dataset: columns, feature roles, embedding tables (FuxiCTR-style dataset config)
# ----------------------------------------------------------------------------------------------------
@dataclass
class TableConfig:
    """One embedding table. Several features may share it (e.g. `item_id` and `hist_item_id`)."""

    # vocabulary size: valid ids are 0 .. num_embeddings-1; "auto": read from the dataset's meta.json at startup
    # (data/vocab.py), so one dataset config serves every copy of a dataset; a number is checked against it
    num_embeddings: Union[int, str] = _num(0, 1)
    embedding_dim: int = _num(16, 1)
    # None lets TorchRec's planner choose among the choices below (data_parallel is never used: its
    # tables would be updated by the dense optimizer instead of the fused sparse one)
    sharding_type: Optional[str] = _choice(None, (None, "table_wise", "row_wise", "column_wise"))
    # fused: the table in device memory (HBM on GPU); fused_uvm: in host memory, read over UVM;
    # fused_uvm_caching: host memory with an HBM cache of hot rows; key_value: SSD-backed. The last three
    # are CUDA-only, for tables larger than GPU memory
    compute_kernel: str = _choice("fused", ("fused", "fused_uvm", "fused_uvm_caching", "key_value"))
    # ids >= num_embeddings: error (a bad row, see data.bad_rows) | hash (id mod num_embeddings) |
    # oov_row (one extra row, index num_embeddings, shared by all unseen ids); negative ids are always bad
    oov: str = _choice("error", ("error", "hash", "oov_row"))
    # initial weights U(-init_bound, init_bound); None: TorchRec's default sqrt(1 / rows) (rows: num_embeddings,
    # plus the OOV row under oov_row)
    init_bound: Optional[float] = _num(None, 0.0, low_open=True)


@dataclass
class FeatureConfig:
    """One Parquet column and the role it plays in the model."""

    name: str = ""  # the Parquet column
    # candidate: one id per row, looked up per id (EmbeddingCollection) -> candidate token
    # sequence:  list<int64> of the behaviour history, oldest first (EmbeddingCollection) -> tokens
    # user:      int64 or list<int64> user/context id(s), sum-pooled (EmbeddingBagCollection)
    # dense:     float column, fed to the user token and the head
    role: str = _choice("candidate", ("candidate", "sequence", "user", "dense"))
    table: Optional[str] = None  # embedding table for sparse roles; must be None for dense


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    train: str = "train"  # file, directory or glob, relative to root
    valid: str = "valid"
    test: str = "test"
    # the event log of a sequence store (file, directory or glob, relative to root): read when a split's
    # files hold no history columns (docs/data.md, "Sequence store"); unused by inline datasets
    events: str = "events"
    label: str = "label"
    user_id: str = "user_id"  # groups GAUC
    timestamp: str = "timestamp"  # request time, unix seconds
    hist_timestamp: str = "hist_timestamp"  # per-event time, same length as the sequence features
    max_len: int = _num(256, 1)  # keep the most recent max_len events of every history
    tables: Dict[str, TableConfig] = field(default_factory=dict)
    features: List[FeatureConfig] = field(default_factory=list)
    batch_size: int = _num(256, 1)
    eval_batch_size: int = _num(1024, 1)
    shuffle_buffer: int = _num(8192, 0)  # rows; 0 disables shuffling of the training stream
    num_workers: int = _num(0, 0, 256)  # DataLoader worker processes building batches
    # batches of similar history length, drawn from the shuffle buffer (less padding); training only
    bucket_by_length: bool = False
    # a row that fails validation: error (names file, row, column) | skip (dropped, counted per reason)
    bad_rows: str = _choice("error", ("error", "skip"))
    # a file whose schema does not match or that cannot be read: error | skip (the whole file, warned)
    bad_files: str = _choice("error", ("error", "skip"))

    def columns(self, role: str) -> list[str]:
        """Columns of the features with this role, in config order."""
        return [f.name for f in self.features if f.role == role]


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------
QUERY_RULES = ("recent", "uniform", "learnable", "recent_uniform")  # model.query_selection (the paper's Table 2)


@dataclass
class ModelConfig:
    # longer, or a baseline of the paper's Table 1 (models/baselines.py, twin.py, hstu.py); the Transformer
    # baseline is longer with merge_k=1 and num_queries >= max_len (configs/experiments/transformer.yaml)
    name: str = _choice("longer", ("longer", "no_sequence", "sum_pooling", "din", "twin", "hstu"))
    token_dim: int = _num(32, 1)  # d: width of one behaviour token before merging
    # log-bucketised (request time - event time), two buckets per doubling of seconds: 128 buckets cover
    # every int64 time difference, more would never be used
    time_buckets: int = _num(64, 1, 128)
    merge: str = _choice("concat", ("concat", "inner_trans"))
    merge_k: int = _num(4, 1)  # K: behaviour tokens per merged token
    merge_proj_dim: Optional[int] = _num(None, 1)  # None keeps width K*d after merging (the paper's FLOPs)
    inner_trans_heads: int = _num(1, 1)
    num_cls: int = _num(2, 0)  # learnable CLS global tokens (plus the user and the candidate token)
    # k: sequence queries of the cross-causal layer (at most the merged length, but learnable)
    num_queries: int = _num(16, 1)
    # which merged tokens are the k queries (the paper's Table 2, docs/model.md): recent (the k newest) |
    # uniform (spread evenly, newest included) | learnable (k learned vectors) | recent_uniform (ceil(k/2)
    # newest + the rest spread over the older tokens)
    query_selection: str = _choice("recent", QUERY_RULES)
    # the layers run on at most this many chunks of rows of similar history length, each trimmed to its longest
    # row (models/hybrid_attention.py `length_chunks`; the same result, less attention over padding); 1: the
    # whole batch at once
    length_chunks: int = _num(4, 1)
    num_self_layers: int = _num(1, 0)  # N self-causal layers after the cross-causal one
    head_dim: int = _num(32, 1)  # attention head width; heads = width // head_dim (twin, hstu: token_dim // head_dim)
    ffn_mult: int = _num(4, 1)
    norm: str = _choice("layernorm", ("layernorm", "rmsnorm"))
    dropout: float = _num(0.0, 0.0, 1.0, high_open=True)  # a probability
    head_hidden: List[int] = _num(low=1, factory=lambda: [256, 64])  # widths of the head MLP's hidden layers
    # kernels dispatcher (kernels/dispatch.py): auto | reference | triton | sdpa (torch's fused attention)
    attention_impl: str = _choice("auto", ("auto", "reference", "triton", "sdpa"))
    din_hidden: List[int] = _num(low=1, factory=lambda: [64, 32])  # DIN's attention MLP
    # sum_pooling / din: how the per-event weights are normalised within a row: none (the paper's
    # baselines: a plain sum, DIN's raw attention scores) | length (divide by the row's length: mean
    # pooling) | softmax (DIN's scores softmax-normalised over the row)
    pool_norm: str = _choice("none", ("none", "length", "softmax"))
    # twin: events each row keeps by the general search unit's score for the exact search unit's attention
    twin_top_k: int = _num(50, 1)
    hstu_layers: int = _num(2, 1)  # hstu: HSTU layers over [history | candidate]
    # this project's extension, not in the paper (docs/paper.md "Deviations from the paper"): the behaviours'
    # similarity to the candidate in the shared embedding space (cosine, per candidate / sequence feature pair
    # sharing a table; models/candidate_match.py): none (the paper's models) | attention (it enters DIN's
    # attention scores / TWIN's target-attention scores / LONGER's and HSTU's candidate row as a learned
    # bias) | attention_readout (also what was attended to, for the head: DIN's pooled similarities, the
    # others' attention-weighted similarities)
    candidate_match: str = _choice("none", ("none", "attention", "attention_readout"))
    # this project's extension, not in the paper (docs/serving.md "Appending events"; model.name longer, the
    # Transformer included): behaviour tokens that depend neither on the request nor on newer events (each
    # event's position counted from the oldest, its time since the previous event instead of before the request,
    # merge groups aligned to the oldest event), so that serving extends a returning user's cached state by its
    # new events exactly instead of encoding the whole history again. false: the paper's tokens (recency, time
    # before the request, merge groups aligned to the newest event)
    stream_tokens: bool = False


# ----------------------------------------------------------------------------------------------------
# optimisation, training loop, logging
# ----------------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    lr: float = _num(1e-3, 0.0, low_open=True)  # dense AdamW peak learning rate
    weight_decay: float = _num(0.01, 0.0)
    warmup_steps: int = _num(50, 0)
    decay: str = _choice("cosine", ("cosine", "linear", "constant"))
    min_lr_ratio: float = _num(0.1, 0.0, 1.0)  # final lr = lr * min_lr_ratio
    grad_clip: float = _num(1.0, 0.0)  # max global grad norm of the dense parameters; 0 disables
    # the sparse optimizer runs fused into the embedding backward (FBGEMM); adam needs CUDA
    sparse_optimizer: str = _choice("rowwise_adagrad", ("rowwise_adagrad", "adagrad", "sgd", "adam"))
    sparse_lr: float = _num(0.05, 0.0, low_open=True)
    sparse_eps: float = _num(1e-8, 0.0, low_open=True)


@dataclass
class TrainConfig:
    seed: int = _num(0, 0)
    epochs: int = _num(1, 1)
    max_steps: int = _num(0, 0)  # >0 stops after this many steps even within an epoch
    eval_every: int = _num(0, 0)  # steps between validation passes; 0 = once per epoch
    log_every: int = _num(10, 1)  # steps between the logged (and printed) train loss, lr and samples/s
    # the logged training NE, AUC and calibration are over the last this many steps of all ranks; 0 = off
    metrics_window: int = _num(100, 0)
    # the test AUC is also computed on this many bootstrap resamples of the test users, for the test set's share
    # of the uncertainty (results line: test_auc_replicates; components/metrics.py `bootstrap_auc`); 0 = off
    test_bootstrap: int = _num(200, 0)
    device: str = _choice("auto", ("auto", "cpu", "cuda"))
    output_dir: str = "runs"  # each run writes runs/<run_name>/ (checkpoint, wandb)
    # default: <model>-<hash of the config's non-default values and the world size> (components/run_dir.py)
    run_name: Optional[str] = None
    runs_table: str = "runs/runs.jsonl"  # one results line appended per run
    # write checkpoints: every checkpoint_every steps, every checkpoint_every_minutes, on a stop signal, at the end
    checkpoint: bool = True
    checkpoint_every: int = _num(0, 0)  # steps between checkpoints; 0 = off
    # minutes between checkpoints (rank 0's clock), so that a preempted or killed job loses minutes; 0 = off
    checkpoint_every_minutes: float = _num(30.0, 0)
    keep_checkpoints: int = _num(3, 1)  # keep the latest k checkpoints of the run, delete older ones
    # auto: a run whose directory holds a checkpoint resumes from the latest one (so a restarted job
    # continues without extra flags); never: start from scratch, moving the run's old files aside
    resume: str = _choice("auto", ("auto", "never"))
    # resume a checkpoint saved under a config whose identity keys differ (listed when refused)
    allow_config_change: bool = False
    # fault injection for tests and drills, right after step `fault_at_step` on rank `fault_rank`, only in a job
    # that started from scratch and was not restarted by torchrun (so the same command, run again, resumes and
    # finishes); 0 disables. kill: the rank SIGKILLs itself; raise: it raises; term: it gets SIGTERM (a worker
    # preempted alone); stop: it SIGSTOPs itself (a hung rank); term_launcher / kill_launcher: its torchrun
    # launcher gets SIGTERM (Slurm's preemption or time limit) / SIGKILL (the node's agent dies)
    fault_at_step: int = _num(0, 0)
    fault_rank: int = _num(0, 0)
    fault: str = _choice("kill", ("kill", "raise", "term", "stop", "term_launcher", "kill_launcher"))
    progress_bar: bool = True
    # a torch.profiler trace of this many training steps (0: off), after the first `profile_after` steps and one
    # warm-up step, one Chrome trace per rank in <run>/profile/ (components/profiler.py)
    profile_steps: int = _num(0, 0, 1000)
    profile_after: int = _num(5, 0)


@dataclass
class ParallelConfig:
    """How the model is spread over processes and computed; applied outside the model
    (`distributed/parallelize.py`), so the model code stays math on tensors."""

    # data parallelism of the dense layers: ddp replicates them, fsdp shards them (FSDP2 fully_shard per
    # transformer block); the embedding tables are always sharded by TorchRec's planner
    dense: str = _choice("ddp", ("ddp", "fsdp"))
    # TorchRec's TrainPipelineSparseDist: the next batch's embedding input all-to-all overlaps this step
    pipeline: bool = True
    # components computed in bf16 (autocast); everything else, embeddings, norms and the loss stay fp32:
    # tokens (token builder, global-token MLPs), attention (projections + attention), ffn, head
    bf16: List[str] = field(default_factory=list)
    # activation recomputation: drop a component's activations in forward, recompute them in backward
    # (self: LONGER's self-causal layers and HSTU's layers)
    recompute: str = _choice("none", ("none", "inner_trans", "cross", "self", "all"))
    # torch.compile of the dense model (TorchInductor; the embeddings are not compiled), after bf16 and
    # recomputation, before DDP/FSDP2 (docs/distributed.md: what it measured, where it recompiles)
    compile: bool = False
    # a rank stuck in a collective this long fails instead of hanging (at most a week)
    collective_timeout_s: int = _num(600, 1, 7 * 24 * 3600)


BF16_COMPONENTS = ("tokens", "attention", "ffn", "head")


@dataclass
class LoggingConfig:
    wandb_mode: str = _choice("offline", ("offline", "online", "disabled"))
    wandb_project: str = "longer-train"
    wandb_group: Optional[str] = None  # W&B run group, e.g. one per sweep (longer-sweep sets it to the sweep name)
    # console warnings from rank 0 only (errors come from every rank); true: from every rank, marked [rank N]
    all_ranks: bool = False
    # also write every logged metric as TensorBoard scalars to <run>/tensorboard/ (`tensorboard --logdir runs`)
    tensorboard: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ----------------------------------------------------------------------------------------------------
# loading and validation
# ----------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, returning it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner:
            try:
                return _convert(value, option, key)
            except ConfigError:
                if len(inner) == 1:
                    raise
        raise ConfigError(f"config key '{key}' must be of type {' or '.join(map(_type_name, inner))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key '{key}' must be of type {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; allowed keys{' under ' + repr(prefix) if prefix else ''}: "
                f"{', '.join(sorted(fields))}"
            )
        converted = _convert(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices is not None and converted not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {converted!r}")
        kwargs[name] = converted
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    """Validate a plain nested dict into a `Config` (raises ConfigError naming the key at fault)."""
    cfg = _build(Config, values, "")
    check_config(cfg)
    return cfg


def _read_yaml(path: Path) -> DictConfig:
    """A config file's top-level mapping; ConfigError naming the file when it cannot be one."""
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{byte:02x} at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    try:
        own = OmegaConf.create(text)  # OmegaConf's YAML loader (it reads 1e-3 as a float)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {one_line(err)}") from None
    except (OmegaConfBaseException, AssertionError, ValueError) as err:  # e.g. a lone number
        raise ConfigError(f"{path}: the top level must be a mapping of config sections ({sections}): {err!r}") from None
    if not isinstance(own, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections ({sections}), got a list")
    return own


def flat(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf value} (lists are leaves)."""
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: values}


def _compose(path: Path, seen: tuple[Path, ...] = (), sources: dict[str, str] | None = None) -> Any:
    """The file's `defaults` (paths relative to it, each composed the same way) merged in order, then the file
    itself. Each file's keys are checked on their own, so an unknown key names the file that holds it.
    `sources`, if given, gets {dotted key: the file that set it last}."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'defaults' includes itself ({' -> '.join(str(p) for p in seen + (path,))})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (in 'defaults' of {seen[-1]})" if seen else ""))
    own = _read_yaml(path)
    defaults = own.pop("defaults", [])
    if not OmegaConf.is_list(defaults) and not isinstance(defaults, list):
        raise ConfigError(f"{path}: config key 'defaults' must be a list of YAML paths, got {defaults!r}")
    try:
        _build(Config, OmegaConf.to_container(own, resolve=True), "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except OmegaConfBaseException as err:  # e.g. an interpolation ${...} that names no key
        raise ConfigError(f"{path}: {one_line(err)}") from None
    parts = [_compose(path.parent / str(name), seen + (path,), sources) for name in defaults]
    if sources is not None:
        sources.update(dict.fromkeys(flat(OmegaConf.to_container(own)), _shown(path)))
    return OmegaConf.merge(*parts, own)


def _shown(path: Path) -> str:
    """A config file as `--print-config` names it: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(paths: str | Path | Sequence[str | Path], overrides: List[str] | None = None,
                sources: dict[str, str] | None = None) -> Config:
    """Load one YAML config, or several merged in order (a dataset config, then an experiment config), and
    apply `key=value` overrides (dotted keys, YAML values). A file may start with `defaults: [path, ...]`
    (relative to that file): those are merged first, in order, then the file; mappings merge key by key,
    lists and scalars are replaced by the later file. `sources`, if given, gets {dotted key: where its value
    came from} (a file, or `override`) for every key that a file or an override set."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no config file given")
    merged = OmegaConf.merge(*[_compose(p, sources=sources) for p in paths])
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.seed=1)")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # YAML-typed
        except (yaml.YAMLError, OmegaConfBaseException) as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({one_line(err)})") from None
        try:
            OmegaConf.update(merged, key, value, merge=True)
        except Exception as err:  # OmegaConf raises several types for a path that cannot exist
            raise ConfigError(f"override {item!r}: config key '{key}' cannot be set ({err})") from None
        if sources is not None:
            sources.update(dict.fromkeys(flat(value, f"{key}.") if isinstance(value, dict) else [key], "override"))
    try:
        values = OmegaConf.to_container(merged, resolve=True)
        cfg = config_from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{' + '.join(str(p) for p in paths)}: {err}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{' + '.join(str(p) for p in paths)}: {one_line(err)}") from None
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def describe(cfg: Config, sources: dict[str, str]) -> str:
    """The whole resolved config as YAML, each value followed by where it came from (`load_config`'s
    `sources`; `default` for a value no file or override set)."""
    import yaml

    lines: list[str] = []

    def emit(values: dict, prefix: str, indent: str) -> None:
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                lines.append(f"{indent}{key}:")
                emit(value, dotted + ".", indent + "  ")
                continue
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()
            source = sources.get(dotted) or _source_above(dotted, sources)
            lines.append(f"{indent}{key}: {text}".ljust(48) + f"  # {source}")

    emit(to_dict(cfg), "", "")
    return "\n".join(lines)


def _source_above(dotted: str, sources: dict[str, str]) -> str:
    """The source of the nearest enclosing key that was set whole (a mapping given by a file), else default."""
    parts = dotted.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in sources:
            return sources[".".join(parts[:end])]
    return "default"


# Fields whose default changed after runs had been named and matched by their non-default values (the run name,
# a sweep's config hash): `non_default` always keeps them, so that a run made before the change (which left the
# field out, holding the old default) never matches one made after it (which would leave it out too, holding
# the new one). model.candidate_match: attention_readout -> none (issue 30).
CHANGED_DEFAULTS: dict[type, tuple[str, ...]] = {ModelConfig: ("candidate_match",)}


def non_default(value: Any) -> Any:
    """Like `to_dict`, without the fields that hold their default: a dataclass becomes a dict of the fields
    that differ from a default-constructed one (all of them when the class has required fields), and those of
    `CHANGED_DEFAULTS` whatever they hold."""
    if dataclasses.is_dataclass(value):
        try:
            default = type(value)()
        except TypeError:
            default = None
        kept = {name for cls, names in CHANGED_DEFAULTS.items() if isinstance(value, cls) for name in names}
        return {f.name: non_default(getattr(value, f.name)) for f in dataclasses.fields(value)
                if default is None or f.name in kept or getattr(value, f.name) != getattr(default, f.name)}
    if isinstance(value, dict):
        return {k: non_default(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [non_default(v) for v in value]
    return value


def numeric_keys(cls: type = None, prefix: str = "") -> dict[str, tuple[Any, Optional[Bound]]]:
    """Every numeric key of the config schema -> (its type, its Bound or None); a table's keys are listed
    under `data.tables.<table>` and list elements as `key[]`."""
    cls = cls or Config
    found: dict[str, tuple[Any, Optional[Bound]]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
        inner = args[0] if origin in (typing.Union, list, List) else tp
        if origin in (dict, Dict):
            inner, key = args[1], f"{key}.<table>"
        if dataclasses.is_dataclass(inner):
            found.update(numeric_keys(inner, f"{key}{'[]' if origin in (list, List) else ''}."))
        elif inner in (int, float):
            found[key + ("[]" if origin in (list, List) else "")] = (inner, f.metadata.get("bound"))
    return found


def _check_bounds(value: Any, key: str) -> None:
    """Every numeric field of a (nested) config dataclass within its declared Bound."""
    for f in dataclasses.fields(value):
        item, name = getattr(value, f.name), f"{key}.{f.name}" if key else f.name
        bound = f.metadata.get("bound")
        if dataclasses.is_dataclass(item):
            _check_bounds(item, name)
        elif isinstance(item, dict):
            for k, v in item.items():
                if dataclasses.is_dataclass(v):
                    _check_bounds(v, f"{name}.{k}")
        elif isinstance(item, list):
            for i, v in enumerate(item):
                if dataclasses.is_dataclass(v):
                    _check_bounds(v, f"{name}[{i}]")
                elif bound is not None:
                    _check_number(v, bound, f"{name}[{i}]")
        elif bound is not None:
            _check_number(item, bound, name)


def _check_number(value: Any, bound: Bound, key: str) -> None:
    # only numbers are checked: None is an unset Optional, and a string is a value a later step resolves
    # (e.g. `num_embeddings: auto`, read from the data)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number {bound.phrase()}, got {value}")
    if not bound.holds(value):
        raise ConfigError(f"config key '{key}' must be {bound.phrase()}, got {value}")
    if isinstance(value, int) and value > INT64_MAX:
        raise ConfigError(f"config key '{key}' must be at most 2**63 - 1 (int64), got {value}")


def check_config(cfg: Config) -> None:
    """Every numeric key within its range, then the cross-field checks that a single key cannot express."""
    _check_bounds(cfg, "")
    data, model = cfg.data, cfg.model
    roles = {f.role for f in data.features}
    for role in ("candidate", "sequence"):
        if role not in roles:
            raise ConfigError(f"config key 'data.features' needs at least one feature with role '{role}'")
    names = [f.name for f in data.features]
    for i, feat in enumerate(data.features):
        key = f"data.features[{i}]"
        if not feat.name:
            raise ConfigError(f"config key '{key}.name' is required (the Parquet column)")
        if names.count(feat.name) > 1:
            raise ConfigError(f"config key '{key}.name': column '{feat.name}' is declared twice")
        if feat.role == "dense":
            if feat.table is not None:
                raise ConfigError(f"config key '{key}.table' must be empty for a dense feature")
        elif feat.table not in data.tables:
            raise ConfigError(
                f"config key '{key}.table' must name a table in data.tables "
                f"({', '.join(sorted(data.tables))}), got {feat.table!r}"
            )
    pooled = {f.table for f in data.features if f.role == "user"}
    per_id = {f.table for f in data.features if f.role in ("candidate", "sequence")}
    if pooled & per_id:
        raise ConfigError(
            f"config key 'data.tables': table(s) {sorted(pooled & per_id)} are used both pooled (user role) "
            "and per id (candidate/sequence role); give each use its own table"
        )
    per_id_dims = {name: data.tables[name].embedding_dim for name in per_id if name in data.tables}
    if len(set(per_id_dims.values())) > 1:
        raise ConfigError(
            "config key 'data.tables': tables of candidate/sequence features share one TorchRec "
            f"EmbeddingCollection and need one embedding_dim, got {per_id_dims}"
        )
    for name, table in data.tables.items():  # a number is in range (_check_bounds); a string must be 'auto'
        if isinstance(table.num_embeddings, str) and table.num_embeddings != "auto":
            raise ConfigError(f"config key 'data.tables.{name}.num_embeddings' must be a positive integer or 'auto', "
                              f"got {table.num_embeddings!r}")
        if name not in pooled | per_id:
            raise ConfigError(f"config key 'data.tables.{name}' is not used by any feature")
    width = model.merge_proj_dim or model.token_dim * model.merge_k
    if width % model.head_dim:
        raise ConfigError(
            f"config key 'model.head_dim' ({model.head_dim}) must divide the merged width {width} "
            "(model.token_dim * model.merge_k, or model.merge_proj_dim)"
        )
    if model.pool_norm != "none" and model.name not in ("sum_pooling", "din"):
        raise ConfigError(
            f"config key 'model.pool_norm' ({model.pool_norm}) applies to model.name sum_pooling or din only, "
            f"not {model.name}"
        )
    if model.query_selection != "recent" and model.name != "longer":
        raise ConfigError(
            f"config key 'model.query_selection' ({model.query_selection}) applies to model.name longer only, "
            f"not {model.name}"
        )
    if model.stream_tokens and model.name != "longer":
        raise ConfigError(
            f"config key 'model.stream_tokens' applies to model.name longer (and the Transformer, which is longer "
            f"with merge_k 1) only, not {model.name}"
        )
    if model.query_selection != "recent" and model.attention_impl == "triton":
        raise ConfigError(
            f"config key 'model.query_selection' ({model.query_selection}): the Triton hybrid-attention kernel "
            "takes the recent rule only; use model.attention_impl auto (falls back to the reference for this "
            "layer) or reference"
        )
    if model.name in ("twin", "hstu") and model.token_dim % model.head_dim:  # (top-k and layers: their bounds)
        raise ConfigError(
            f"model.name={model.name}: config key 'model.head_dim' ({model.head_dim}) must divide "
            f"model.token_dim ({model.token_dim}): the heads are token_dim // head_dim"
        )
    for i, component in enumerate(cfg.parallel.bf16):
        if component not in BF16_COMPONENTS:
            raise ConfigError(
                f"config key 'parallel.bf16[{i}]' must be one of {list(BF16_COMPONENTS)}, got {component!r}"
            )
    if model.merge == "inner_trans" and model.token_dim % model.inner_trans_heads:
        raise ConfigError("config key 'model.inner_trans_heads' must divide model.token_dim")
    name = cfg.train.run_name
    if name is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", name) or ".." in name):
        raise ConfigError(
            f"config key 'train.run_name' must be a plain name (letters, digits and . _ + = -, no '/' or '..': "
            f"a folder inside train.output_dir), got {name!r}"
        )
    if cfg.train.checkpoint_every and not cfg.train.checkpoint:
        raise ConfigError(
            f"config key 'train.checkpoint_every' ({cfg.train.checkpoint_every}) asks for checkpoints that "
            "train.checkpoint=false turns off; drop one of the two"
        )
