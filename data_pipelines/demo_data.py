"""The demo's data side: `vllama_jax.demo.recipe.DemoData` filled from this package.

    DEMO_DATA.make_dataset(folder, ...)     synthetic audio-visual QA clips (synthetic_qa.py)
    DEMO_DATA.test_questions(folder)        the held-out questions
    DEMO_DATA.write_phase_cache(cfg)        a phase's rows decoded once into `cfg.data.cache` (cache.py)
    DEMO_DATA.train_data(cfg, model)        a phase's batches (from_config.py)

The library never imports data_pipelines (the arrows run one way: this package uses vllama_jax); the
`demo` command hands this object to `vllama_jax.demo.run.run_demo`, as `train` hands it batches.
"""
from __future__ import annotations

import json
import os
import shutil

from data_pipelines.cache import write_cache
from data_pipelines.from_config import sample_spec, source_digests, sources_of, train_data
from data_pipelines.records import MANIFEST, manifest_mismatch
from data_pipelines.synthetic_qa import KINDS, make_qa_dataset, read_test_questions
from vllama_jax.demo.recipe import DemoData


def write_phase_cache(cfg, media_cache=None) -> None:
    """Decode the phase's rows into `cfg.data.cache`, unless a complete cache of the same rows is there
    (one made from other or older annotation files is written again). `media_cache` (a MediaCache)
    shares the decoded clips with the other phases' caches."""
    manifest = os.path.join(cfg.data.cache, MANIFEST)
    if os.path.exists(manifest):
        sources = sources_of(cfg)
        with open(manifest) as f:
            made = json.load(f)
        # One without digests (an earlier version's) cannot be checked: the demo decodes it again.
        if "sha256" in made and manifest_mismatch(made, [s.path for s in sources], source_digests(cfg, sources)) is None:
            return
        shutil.rmtree(cfg.data.cache)
    # float32: the cached frames and fbank are exactly what decoding would give.
    write_cache(sources_of(cfg), sample_spec(cfg, cfg.model.resolve()), cfg.data.cache, dtype="float32",
                read_threads=cfg.data.read_threads, media_cache=media_cache)


DEMO_DATA = DemoData(make_dataset=make_qa_dataset, test_questions=read_test_questions, kinds=KINDS,
                     write_phase_cache=write_phase_cache, train_data=train_data)
