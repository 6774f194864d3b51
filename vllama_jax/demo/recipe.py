"""The demo's training: its phases of the recipe through the real `train` code, then a release checkpoint.

    cfgs = phase_configs(out, "stc", steps={"demo_av": 8})   # TrainConfig per phase, paths under `out`
    build_caches(cfgs, data)                                 # decode every row once (data.write_phase_cache)
    calibrated_init(cfgs, data)                              # the first phase's start: calibrate.py
    train_variant(cfgs, data, on_phase=...)                  # vllama_jax.train.loop.train, phase after phase
    export_run(cfgs[-1], folder)                             # `vllama-jax convert` of the last phase

`data` is a `DemoData`: the data side (clips, questions, caches, batches) that data_pipelines gives
(`data_pipelines/demo_data.py`). The library does not import data_pipelines; the `demo` command
wires the two, as `train` does.

The phases are launch/configs/demo_video.yaml -> demo_audio.yaml -> demo_av.yaml (each starts from
the previous one's last checkpoint: `init.from_phase`); the demo only points their paths at its output
folder, picks the model (VARIANTS: the STC connector, or the mean-pooling baseline) and, for --quick,
the step counts. Everything a run writes is what `vllama-jax train` writes: metrics.jsonl,
TensorBoard events, Orbax checkpoints, config.yaml.

The first phase starts from `runs/<variant>/init`: the model's random init with its frozen towers
calibrated on the joint phase's clips (calibrate.py: their features centred / standardised, folded
into the towers' weights), the connector's RegNet blocks starting as their shortcuts and its linear
maps reading standardised inputs, written in the release layout. Without the calibration the decoder
ignores the media.

Every row of every phase is decoded once into an ArrayRecord cache (the train code's `data.cache`):
the fbank of a clip's 30 s sound window costs more CPU than a training step spends on the sample, and
each row is seen several times. Both variants read the same caches (same rows, same pre-processing),
and the phases' caches share each clip's decoding (`build_caches`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import flax.linen as nn
import jax

from vllama_jax.answering import DEFAULT_MEDIA_CACHE_MB
from vllama_jax.checkpoints.convert import convert
from vllama_jax.checkpoints.export import save_videollama2
from vllama_jax.demo.calibrate import calibrate_towers, standardise_connector, zero_init_last
from vllama_jax.loading import load_tokenizer
from vllama_jax.models.sequence import dummy_batch
from vllama_jax.models.videollama2 import VideoLLaMA2
from vllama_jax.preprocess.media_cache import MediaCache
from vllama_jax.train.config import load_train_config, phase_config_path
from vllama_jax.train.loop import train

log = logging.getLogger(__name__)

PHASES = ("demo_video", "demo_audio", "demo_av")
VARIANTS = {"stc": "demo-av", "mean_pool": "demo-av-meanpool"}  # name -> model preset (vllama_jax/config.py)
CALIBRATION_BATCHES = 8  # of the joint phase (128 clips at its batch size 16)


@dataclasses.dataclass(frozen=True)
class DemoData:
    """What the demo needs from the data side (data_pipelines/demo_data.py builds it).

    make_dataset(folder, num_train, num_test, num_audio, seed=, per_kind=, progress=) -> the data folder:
        clips, the phases' annotation files, held-out questions
    test_questions(data_folder) -> [{"id", "kind", "template", "question", "answer", "video", "chance"}]
    kinds: the question kinds, in the order the report lists them
    write_phase_cache(cfg, media_cache): decode a phase's rows once into `cfg.data.cache` (kept when
        complete), each clip's frames and sound through `media_cache` (shared by the phases)
    train_data(cfg, model_config) -> the phase's `TrainData` (batches for `vllama_jax.train.loop.train`)
    """

    make_dataset: Callable[..., str]
    test_questions: Callable[[str], List[dict]]
    kinds: Sequence[str]
    write_phase_cache: Callable[[object, Optional[MediaCache]], None]
    train_data: Callable[..., object]


def phase_configs(out: str, variant: str, steps: Optional[Dict[str, int]] = None, batch_size: Optional[int] = None,
                  progress_bar: bool = True, fast_compile: bool = False) -> List:
    """The TrainConfig of every phase for `variant`, its paths under `out` (the first phase starts from
    the calibrated init, `calibrated_init`)."""
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
        if phase == PHASES[0]:
            sets.append(f"init.checkpoint={os.path.join(out, 'runs', variant, 'init')}")
        if steps and phase in steps:
            sets.append(f"train.steps={steps[phase]}")
        if batch_size:
            sets.append(f"train.global_batch_size={batch_size}")
        cfgs.append(load_train_config(phase_config_path(phase), sets))
    return cfgs


class _Reuse:
    """The phases' media cache as the last phase sees it: what earlier phases decoded is reused, and what
    it decodes itself is not kept (no later phase asks for it, and it would push out what this one reuses)."""

    def __init__(self, cache: MediaCache):
        self.cache = cache

    def get_or_load(self, key, load):
        return self.cache.get_or_load(key, load, keep=False)


def build_caches(cfgs, data: DemoData, media_bytes: int = DEFAULT_MEDIA_CACHE_MB << 20) -> dict:
    """Decode each phase's rows into its `data.cache` folder, unless a complete cache is there.

    The phases' rows ask about the same clips (video, audio and audio-visual rows), so each clip's frames
    and sound go through one MediaCache of `media_bytes`: decoded once for all the phases' caches (the
    default run: 1200 clips' frames, 0.18 GB, and the audio phase's 400 fbanks, 0.61 GB, kept; 2400
    decodings instead of 4000, 95 -> 76 s). Held only while the caches are written. Returns its stats."""
    clips = MediaCache(media_bytes)
    for i, cfg in enumerate(cfgs):
        data.write_phase_cache(cfg, clips if i < len(cfgs) - 1 else _Reuse(clips))
    log.info("phase caches, decoded clips: %s", clips.stats())
    return clips.stats()


def calibrated_init(cfgs, data: DemoData, num_batches: int = CALIBRATION_BATCHES) -> str:
    """Write the first phase's `init.checkpoint` (unless it is there): the model's random init (seed
    `train.seed`) with its towers and connector calibrated on the first batches of the last (joint)
    phase, whose rows carry both video and sound; release layout, with the demo's tokenizer."""
    first, joint = cfgs[0], cfgs[-1]
    folder = first.init.checkpoint
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    model_cfg = first.model.resolve()
    model = VideoLLaMA2(model_cfg)
    # Jitted: one compile of the init program (eagerly, each of its ~400 ops compiles on its own: 30 s).
    init = jax.jit(lambda rng, batch: nn.unbox(model.init(rng, batch)["params"]))
    params = init(jax.random.PRNGKey(first.train.seed), dummy_batch(model_cfg))
    source = data.train_data(joint, model_cfg)
    n = max(1, min(num_batches, source.num_rows // joint.train.global_batch_size))
    batches = [source.batches[k] for k in range(n)]
    params = zero_init_last(calibrate_towers(model, params, batches))
    params = standardise_connector(model, params, batches)
    return save_videollama2(folder, model_cfg, params, tokenizer=load_tokenizer(first.data.tokenizer))


def train_variant(cfgs, data: DemoData, on_phase: Optional[Callable[[str, float], None]] = None
                  ) -> Dict[str, Dict[int, float]]:
    """Train the phases in order (a finished phase is skipped: `train` resumes at its last step);
    returns {phase: {step: loss}} of the steps run now. `on_phase(name, seconds)` after each."""
    losses = {}
    for cfg in cfgs:
        t = time.perf_counter()
        losses[cfg.name] = train(cfg, data.train_data(cfg, cfg.model.resolve()))
        if on_phase:
            on_phase(cfg.name, time.perf_counter() - t)
    return losses


def export_run(cfg, folder: str) -> str:
    """The last checkpoint of the run `cfg` as a release-layout checkpoint (what `vllama-jax convert` does)."""
    return convert(cfg.output_dir, folder)
