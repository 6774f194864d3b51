"""The training config of one phase: frozen dataclasses read from YAML, with `--set key=value` overrides.

    cfg = load_train_config("launch/configs/video_finetune.yaml", ["train.steps=100", "mesh.fsdp=8"])

Sections (each a frozen dataclass; the YAML may leave any field out to take its default):

    name, output_dir      the run: metrics.jsonl, TensorBoard events and Orbax checkpoints go to output_dir
    model                 which VideoLLaMA 2 (a preset name), compute dtype, remat policy
    init                  where the params start: a released / converted checkpoint folder, another
                          phase's run (by name, under output_root), extra parts (an HF decoder, a BEATs .pt)
    data                  annotation files + media folder (or a generated smoke dataset), tokenizer, buckets
    optimizer             what trains (regexes over param paths), AdamW, warmup + cosine, clipping
    train                 steps, global batch, gradient accumulation, seed, logging
    mesh                  axis sizes {data, fsdp, tensor, expert}; -1 takes the remaining devices
    checkpoint            save every N steps, keep K, async

Every field is type-checked; an unknown key or a wrong type is a `TrainConfigError` naming the dotted
key (`optimizer.learning_rate: expected float, got 'fast'`).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml

from vllama_jax.config import preset
from vllama_jax.loading import load_videollama2_config


class TrainConfigError(ValueError):
    """A training config that cannot be used: names the file (when there is one) and the dotted key."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny-mistral"  # a name of vllama_jax.config.PRESETS, or a VideoLLaMA 2 checkpoint folder
    dtype: str = "bfloat16"  # compute dtype; params stay float32 (the master copy)
    remat: str = "none"  # remat policy passed to the model ("none", "full", ...)

    def resolve(self):
        """The VideoLLaMA2Config this section names."""
        if os.path.isfile(os.path.join(self.preset, "config.json")):
            return load_videollama2_config(self.preset)[0]
        return preset(self.preset)


@dataclasses.dataclass(frozen=True)
class InitSection:
    """Where params come from, applied in this order over a random init (later sources win)."""

    checkpoint: Optional[str] = None  # a VideoLLaMA 2 / HF folder, or a run's output_dir (Orbax)
    from_phase: Optional[str] = None  # another phase's run by name: <output_root>/<from_phase>
    output_root: str = "runs"
    parts: Dict[str, str] = dataclasses.field(default_factory=dict)  # {"decoder": path, "audio": BEATs.pt, ...}


@dataclasses.dataclass(frozen=True)
class AnnotationSection:
    path: str  # a JSON list or a JSONL file, relative to data.folder unless absolute
    weight: Optional[float] = None  # share of the mix; None for every file: as concatenated (by row count)
    audio_from_video: bool = False  # audio-visual rows: the audio is the video's own track (original's `va`)


@dataclasses.dataclass(frozen=True)
class DataSection:
    folder: str = "data"  # media paths in the annotations are relative to this folder
    annotations: Tuple[AnnotationSection, ...] = ()
    tokenizer: Optional[str] = None  # a tokenizer folder; None: the init checkpoint's
    processor: Optional[str] = None  # the vision tower folder or hub id; None: the model config's tower
    template: str = "chat"  # "chat" (instruction tuning) or "plain" (pretraining: media + caption)
    model_max_length: int = 2048
    length_buckets: Tuple[int, ...] = ()  # text lengths batches are padded to; () = max/4, max/2, max
    seed: int = 0
    worker_count: int = 0  # grain worker processes decoding media (0: in the main process)
    read_threads: int = 2  # threads per process, each decoding a batch
    prefetch: int = 2  # batches decoded ahead per process
    synthetic_samples: int = 0  # > 0: generate a tiny dataset of real mp4/jpg/wav files into `folder`
    cache: Optional[str] = None  # a folder of pre-decoded ArrayRecord shards to train from instead


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    trainable: Tuple[str, ...] = ("connector",)  # regexes over "/"-joined param paths; the rest is frozen
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0: no clipping


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 0  # optimizer steps; 0: `epochs` passes over the (weighted) data
    epochs: float = 1.0
    global_batch_size: int = 8  # samples per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per step (the batch is split; memory of one micro-batch)
    seed: int = 42
    log_every: int = 1
    progress_bar: bool = True
    # XLA backend optimisation off: about half the compile time, slower steps. For CPU smoke runs and
    # tests, where compiling dominates; never for real training.
    fast_compile: bool = False

    def compiler_options(self) -> Dict[str, Any]:
        return {"xla_backend_optimization_level": 0} if self.fast_compile else {}


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1

    def axes(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 500  # steps between saves (the last step is always saved)
    keep: int = 2  # checkpoints kept
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelSection = ModelSection()
    init: InitSection = InitSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    train: TrainSection = TrainSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()

    def __post_init__(self):
        if self.train.global_batch_size % self.train.grad_accum:
            raise TrainConfigError(f"train.global_batch_size {self.train.global_batch_size} is not a multiple "
                                   f"of train.grad_accum {self.train.grad_accum}")
        if self.data.template not in ("chat", "plain"):
            raise TrainConfigError(f"data.template: '{self.data.template}' is not 'chat' or 'plain'")
        if self.model.dtype not in ("float32", "bfloat16", "float16"):
            raise TrainConfigError(f"model.dtype: '{self.model.dtype}' is not float32, bfloat16 or float16")
        if not self.data.annotations:
            raise TrainConfigError("data.annotations: name at least one annotation file")

    def to_yaml(self) -> str:
        """The whole config, every default filled in: what a run records in its output_dir."""
        def plain(x):
            if isinstance(x, (tuple, list)):
                return [plain(v) for v in x]
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return x
        return yaml.safe_dump(plain(dataclasses.asdict(self)), sort_keys=False)


# ----------------------------------------------------------------------------------------------------
# dict -> dataclass, checking every key and type
# ----------------------------------------------------------------------------------------------------

def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (tuple, Tuple):
        if isinstance(value, (str, int, float, dict)):
            value = [value]  # a single entry where a list is expected
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool, float):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise TrainConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
        return value
    raise TrainConfigError(f"{key}: unsupported type {hint}")  # a field type this reader does not know


def from_dict(cls, d: Any, where: str = ""):
    """Build dataclass `cls` from a (YAML) dict; unknown keys and wrong types are errors naming the key."""
    if not isinstance(d, dict):
        raise TrainConfigError(f"{where or cls.__name__}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise TrainConfigError(f"{where or 'config'}: unknown key(s) {unknown}; known: {names}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field left out
        raise TrainConfigError(f"{where or cls.__name__}: {e}") from None


def apply_override(d: dict, assignment: str) -> None:
    """`a.b.c=value` sets d["a"]["b"]["c"]; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in assignment:
        raise TrainConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


CONFIG_DIR = os.path.join("launch", "configs")  # the recipe's phase configs, in the repository


def phase_config_path(phase: str) -> str:
    """A phase's YAML: a path as given, else launch/configs/PHASE.yaml under the working directory or in
    this checkout (`pip install -e .` leaves the package in it). Errors say `--phase`, the flag that takes it."""
    if phase.endswith((".yaml", ".yml")) or os.sep in phase:
        if not os.path.isfile(phase):
            raise ValueError(f"--phase {phase}: no such file")
        return phase
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folders = [CONFIG_DIR, os.path.join(checkout, CONFIG_DIR)]
    for folder in folders:
        path = os.path.join(folder, phase + ".yaml")
        if os.path.isfile(path):
            return path
    known = sorted({f[:-5] for d in folders if os.path.isdir(d) for f in os.listdir(d) if f.endswith(".yaml")})
    raise ValueError(f"--phase {phase}: no {phase}.yaml in {CONFIG_DIR}; known phases: {', '.join(known)}")


def load_train_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None) and apply `key=value` overrides."""
    d: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise TrainConfigError(f"config file {path} does not exist")
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise TrainConfigError(f"{path}: the top level must be a mapping")
    for o in overrides:
        apply_override(d, o)
    try:
        return from_dict(TrainConfig, d)
    except TrainConfigError as e:
        raise TrainConfigError(f"{path}: {e}" if path else str(e)) from None


def replace_section(cfg: TrainConfig, section: str, **changes) -> TrainConfig:
    """`cfg` with some fields of one section changed: `replace_section(cfg, "data", worker_count=4)`."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
