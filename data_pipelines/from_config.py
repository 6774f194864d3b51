"""From a training config (`vllama_jax.train.config.TrainConfig`) to this process's `TrainData`.

Fills what the `data` section leaves out from the model: frames per clip and image size from the
vision tower, whether there is an audio tower, the chat template from the decoder family; the
tokenizer and the vision pre-processing from the checkpoint folder the run starts from.
"""
from __future__ import annotations

import os
from typing import List, Optional

from data_pipelines.pipeline import Source, TrainData, annotation_path
from data_pipelines.records import check_manifest
from data_pipelines.samples import SampleSpec
from vllama_jax.config import VideoLLaMA2Config
from vllama_jax.evaluation.reproducibility import sha256_file


def sources_of(cfg) -> List[Source]:
    return [Source(a.path, a.weight, a.audio_from_video) for a in cfg.data.annotations]


def _checkpoint_folder(cfg) -> Optional[str]:
    """The folder holding tokenizer files and the vision tower: the init checkpoint or the model folder."""
    for cand in (cfg.init.checkpoint, cfg.model.preset):
        if cand and os.path.isfile(os.path.join(cand, "config.json")):
            return cand
    return None


def sample_spec(cfg, model: VideoLLaMA2Config) -> SampleSpec:
    folder = _checkpoint_folder(cfg)
    tokenizer = cfg.data.tokenizer or folder
    if tokenizer is None:
        raise ValueError("data.tokenizer is not set and the run does not start from a checkpoint folder with one")
    processor = cfg.data.processor or model.vision_tower_name
    if not cfg.data.processor and folder and processor and os.path.isdir(os.path.join(folder, processor)):
        processor = os.path.join(folder, processor)  # released configs name the tower relative to the folder
    if model.vision is None:
        raise ValueError(f"model {cfg.model.preset} has no vision tower; the data pipeline needs one")
    return SampleSpec(
        data_folder=cfg.data.folder, tokenizer=tokenizer, processor=processor, family=model.decoder.family,
        num_frames=model.num_frames, image_size=model.vision.image_size, has_audio_tower=model.audio is not None,
        model_max_length=cfg.data.model_max_length, template=cfg.data.template,
        aspect_ratio=model.image_aspect_ratio or "pad")


def make_synthetic_data(cfg, model: VideoLLaMA2Config, process_index: int = 0) -> None:
    """Generate the smoke dataset into `data.folder` when `data.synthetic_samples` > 0 (once)."""
    if cfg.data.synthetic_samples:
        from data_pipelines.synthetic import make_dataset
        make_dataset(cfg.data.folder, cfg.data.synthetic_samples, audio=model.audio is not None,
                     process_index=process_index)


def source_digests(cfg, sources: List[Source]) -> List[Optional[str]]:
    """sha256 of each annotation file, None for one this host does not have (it may train from the cache alone)."""
    paths = [annotation_path(cfg.data.folder, s.path) for s in sources]
    return [sha256_file(p) if os.path.exists(p) else None for p in paths]


def train_data(cfg, model: VideoLLaMA2Config, process_index: int = 0, process_count: int = 1) -> TrainData:
    """The run's data (generated first when the config asks for the synthetic dataset)."""
    make_synthetic_data(cfg, model, process_index)
    sources = sources_of(cfg)
    if cfg.data.cache:
        check_manifest(cfg.data.cache, [s.path for s in sources], source_digests(cfg, sources))
    return TrainData(sources, sample_spec(cfg, model), cfg.train.global_batch_size, seed=cfg.data.seed,
                     buckets=cfg.data.length_buckets, process_index=process_index, process_count=process_count,
                     cache=cfg.data.cache, worker_count=cfg.data.worker_count, read_threads=cfg.data.read_threads,
                     prefetch=cfg.data.prefetch)
