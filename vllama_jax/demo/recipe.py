"""The demo's training: its phases of the recipe through the real `train` code, then a release checkpoint.

    cfgs = phase_configs(out, "stc", steps={"demo_av": 8})   # TrainConfig per phase, paths under `out`
    build_caches(cfgs)                                       # decode every row once (data_pipelines/cache.py)
    train_variant(cfgs, on_phase=...)                        # vllama_jax.train.loop.train, phase after phase
    export_run(cfgs[-1], folder)                             # `vllama-jax convert` of the last phase

The phases are launch/configs/demo_video.yaml -> demo_audio.yaml -> demo_av.yaml (each starts from
the previous one's last checkpoint: `init.from_phase`); the demo only points their paths at its output
folder, picks the model (VARIANTS: the STC connector, or the mean-pooling baseline) and, for --quick,
the step counts. Everything a run writes is what `vllama-jax train` writes: metrics.jsonl,
TensorBoard events, Orbax checkpoints, config.yaml.

Every row of every phase is decoded once into an ArrayRecord cache (the train code's `data.cache`):
the fbank of a clip's 30 s sound window costs more CPU than a training step spends on the sample, and
each row is seen several times. Both variants read the same caches (same rows, same pre-processing).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

PHASES = ("demo_video", "demo_audio", "demo_av")
VARIANTS = {"stc": "demo-av", "mean_pool": "demo-av-meanpool"}  # name -> model preset (vllama_jax/config.py)


def configs_folder() -> str:
    """launch/configs of this checkout (the demo runs from the repository, as `pip install -e .` leaves it)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(here, "launch", "configs")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} not found: the demo reads its phase configs from the repository's "
                                "launch/configs (install with `pip install -e .`)")
    return folder


def phase_configs(out: str, variant: str, steps: Optional[Dict[str, int]] = None, batch_size: Optional[int] = None,
                  progress_bar: bool = True, fast_compile: bool = False) -> List:
    """The TrainConfig of every phase for `variant`, its paths under `out`."""
    from vllama_jax.train.config import load_train_config

    cfgs = []
    for phase in PHASES:
        sets = [f"output_dir={os.path.join(out, 'runs', variant, phase)}",
                f"model.preset={VARIANTS[variant]}",
                f"init.output_root={os.path.join(out, 'runs', variant)}",
                f"data.folder={os.path.join(out, 'data')}",
                f"data.tokenizer={os.path.join(out, 'tokenizer')}",
                f"data.processor={os.path.join(out, 'processor')}",
                f"data.cache={os.path.join(out, 'cache', phase)}",
                f"train.progress_bar={str(progress_bar).lower()}",
                f"train.fast_compile={str(fast_compile).lower()}"]
        if steps and phase in steps:
            sets.append(f"train.steps={steps[phase]}")
        if batch_size:
            sets.append(f"train.global_batch_size={batch_size}")
        cfgs.append(load_train_config(os.path.join(configs_folder(), phase + ".yaml"), sets))
    return cfgs


def build_caches(cfgs, progress: Optional[Callable[[str], None]] = None) -> None:
    """Decode each phase's rows into its `data.cache` folder, unless a complete cache is there."""
    from data_pipelines.cache import write_cache
    from data_pipelines.records import MANIFEST
    from data_pipelines.from_config import sample_spec, sources_of

    for cfg in cfgs:
        if os.path.exists(os.path.join(cfg.data.cache, MANIFEST)):
            continue
        if progress:
            progress(cfg.name)
        # float32: the cached frames and fbank are exactly what decoding would give.
        write_cache(sources_of(cfg), sample_spec(cfg, cfg.model.resolve()), cfg.data.cache, dtype="float32",
                    read_threads=cfg.data.read_threads)


def train_variant(cfgs, on_phase: Optional[Callable[[str, float], None]] = None) -> Dict[str, Dict[int, float]]:
    """Train the phases in order (a finished phase is skipped: `train` resumes at its last step);
    returns {phase: {step: loss}} of the steps run now. `on_phase(name, seconds)` after each."""
    import time

    from data_pipelines.from_config import train_data
    from vllama_jax.train.loop import train

    losses = {}
    for cfg in cfgs:
        t = time.perf_counter()
        losses[cfg.name] = train(cfg, train_data(cfg, cfg.model.resolve()))
        if on_phase:
            on_phase(cfg.name, time.perf_counter() - t)
    return losses


def export_run(cfg, folder: str) -> str:
    """The last checkpoint of the run `cfg` as a release-layout checkpoint (what `vllama-jax convert` does)."""
    from vllama_jax.checkpoints.convert import convert

    return convert(cfg.output_dir, folder)
