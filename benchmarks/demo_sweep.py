"""How the demo's video phase learns with more steps and more clips: a sweep, through the real train loop.

    python -m benchmarks.demo_sweep --demo out/demo --out /tmp/sweep \
        long:stc:3000:48000 pool:mean_pool:3000:48000 \
        "tower:stc:3000:48000:optimizer.trainable=[vision,connector,decoder]"

Each run is `NAME:VARIANT:STEPS:CLIPS[:OVERRIDES]`: the demo's video phase (launch/configs/demo_video.yaml,
`vllama_jax.train.loop.train`) from `DEMO/runs/VARIANT/init` (the calibrated init a `vllama-jax demo`
run wrote; VARIANT stc or mean_pool) for STEPS steps over CLIPS distinct training clips, OVERRIDES being
`;`-separated `--set` items of the config. The clips are rendered on the fly in worker processes
(`synthetic_scenes.render_frames`, the demo's pre-processing and question sampling, without the mp4
round trip), so a sweep can afford many more clips than the demo writes; the first CLIPS of one seeded
stream, shared by every run. Writing mp4 files is what limits the demo's clip count on 2 cores.

Each run is scored on the visual questions (spatial, temporal, counting) of `--test-clips` held-out
rendered clips, asked one at a time, by teacher forcing: a question counts as right when the model's
most likely next token is the answer's at every answer position (what greedy decoding would write).
Accuracy per template, and colour / shape per object count (`colour3`: scenes of three objects).
Prints one JSON line per run and writes `OUT/results.json`. Where a GPU is present it is used; the
numbers in the README's demo section (2026-11-27) came from an H200, the demo's own from its CPU.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import time
from typing import Dict, List

import numpy as np

from data_pipelines import synthetic_qa as qa
from data_pipelines import synthetic_scenes as scenes
from data_pipelines.samples import collate
from vllama_jax.config import IGNORE_INDEX

TEXT_BUCKET = 112  # demo_video.yaml's length bucket
TEST_SEED = 10_000_000  # held-out clips draw from seeds far past any training clip's

_worker: Dict[str, object] = {}


def _init_worker(demo: str) -> None:
    from vllama_jax.loading import load_tokenizer
    from vllama_jax.preprocess.image import ImageProcessorConfig

    _worker["tokenizer"] = load_tokenizer(os.path.join(demo, "tokenizer"))
    _worker["processor"] = ImageProcessorConfig.from_json_file(os.path.join(demo, "processor",
                                                                            "preprocessor_config.json"))


def _frames(scene) -> np.ndarray:
    """(8, 3, 40, 40) float16: the frames the demo's processor takes from the clip, pre-processed."""
    from vllama_jax.preprocess.image import preprocess
    from vllama_jax.preprocess.video import sample_indices

    frames = scenes.render_frames(scene)
    picked = sample_indices(len(frames), float(scenes.FPS), 8)
    return preprocess([frames[i] for i in picked], _worker["processor"]).astype(np.float16)


def _sample(conversation, video) -> dict:
    from vllama_jax.preprocess.conversation import tokenize_conversation

    ids, labels = tokenize_conversation(conversation, _worker["tokenizer"], "qwen2", TEXT_BUCKET)
    return {"input_ids": np.asarray(ids, np.int32), "labels": np.asarray(labels, np.int32), "video": video,
            "audio": None, "bad": False}


def train_clip(seed: int) -> dict:
    """A training row as video.json holds it: the clip with some of its visual questions."""
    rng = np.random.default_rng(seed)
    scene = scenes.sample_scene(rng)
    row = qa._train_rows("clip.mp4", scene, rng, with_audio_row=False)["video.json"]
    return _sample(row["conversations"], _frames(scene))


def test_clip(seed: int) -> List[dict]:
    """Every visual question of a held-out clip, one row each."""
    rng = np.random.default_rng(seed)
    scene = scenes.sample_scene(rng)
    video = _frames(scene)
    rows = []
    for q in qa.scene_questions(scene):
        if q["kind"] in qa.VISUAL_KINDS:
            q = qa.as_asked(q, rng, rng.random() < qa.MC_SHARE)
            conv = [{"from": "human", "value": "<video>\n" + q["question"]}, {"from": "gpt", "value": q["answer"]}]
            rows.append(dict(_sample(conv, video), template=q["template"], objects=len(scene.objects)))
    return rows


class ClipPool:
    """The train loop's data interface (`num_rows`, `iterator(start)`) over samples held in memory:
    shuffled, repeated and batched by grain, as `TrainData` does with decoded rows."""

    def __init__(self, samples: List[dict], batch: int, seed: int):
        import grain

        self.num_rows = len(samples)
        stream = grain.MapDataset.source(samples).shuffle(seed=seed).repeat(None)
        self.batches = stream.batch(batch, drop_remainder=True, batch_fn=self._collate)

    @staticmethod
    def _collate(rows):
        return collate(rows, (TEXT_BUCKET,), 8, scenes.SIZE, True)

    def iterator(self, start: int = 0):
        import grain

        ds = self.batches[start:] if start else self.batches
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8)))


def score(checkpoint: str, tests: List[dict], batch: int = 50) -> Dict[str, float]:
    """Teacher-forced accuracy per template (see the module doc)."""
    import vllama_jax

    model = vllama_jax.load(checkpoint)
    right = collections.defaultdict(list)
    for i in range(0, len(tests), batch):
        rows = tests[i:i + batch]
        inputs = {k: v for k, v in ClipPool._collate(rows).items() if k != "bad"}
        out = model.forward(inputs)
        predicted, target = out["logits"][:, :-1].argmax(-1), out["labels"][:, 1:]
        ok = ((predicted == target) | (target == IGNORE_INDEX)).all(-1)
        for row, good in zip(rows, ok):
            keys = ["visual", row["template"]]
            if row["template"] in ("colour", "shape"):
                keys.append(f"{row['template']}{row['objects']}")
            for k in keys:
                right[k].append(bool(good))
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(right.items())}


def parse_run(text: str) -> dict:
    parts = text.split(":", 4)
    if len(parts) < 4 or parts[1] not in ("stc", "mean_pool"):
        raise ValueError(f"run {text!r}: expected NAME:VARIANT:STEPS:CLIPS[:OVERRIDES], VARIANT stc or mean_pool")
    overrides = [s for s in (parts[4].split(";") if len(parts) == 5 else []) if s]
    return {"name": parts[0], "variant": parts[1], "steps": int(parts[2]), "clips": int(parts[3]),
            "overrides": overrides}


def main(argv=None) -> Dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME:VARIANT:STEPS:CLIPS[:OVERRIDES]")
    ap.add_argument("--demo", required=True, help="a `vllama-jax demo` output folder (tokenizer, processor, inits)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--test-clips", type=int, default=300)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    runs = [parse_run(r) for r in args.runs]
    demo, out = os.path.abspath(args.demo), os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    start = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers, _init_worker, (demo,)) as pool:
        tests = [r for rows in pool.map(test_clip, range(TEST_SEED, TEST_SEED + args.test_clips), chunksize=16)
                 for r in rows]
        clips = pool.map(train_clip, range(max(r["clips"] for r in runs)), chunksize=64)
    print(f"rendered {len(clips)} training clips, {len(tests)} held-out questions in "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    from vllama_jax.checkpoints.convert import convert
    from vllama_jax.train.config import load_train_config, phase_config_path
    from vllama_jax.train.loop import train

    results = {}
    for run in runs:
        preset = {"stc": "demo-av", "mean_pool": "demo-av-meanpool"}[run["variant"]]
        folder = os.path.join(out, run["name"])
        sets = [f"output_dir={folder}", f"model.preset={preset}", f"init.output_root={out}",
                f"init.checkpoint={os.path.join(demo, 'runs', run['variant'], 'init')}",
                f"data.tokenizer={os.path.join(demo, 'tokenizer')}", f"data.processor={os.path.join(demo, 'processor')}",
                "train.progress_bar=false", f"train.steps={run['steps']}", "checkpoint.every=100000"] + run["overrides"]
        cfg = load_train_config(phase_config_path("demo_video"), sets)
        t = time.perf_counter()
        losses = train(cfg, ClipPool(clips[:run["clips"]], cfg.train.global_batch_size, cfg.data.seed))
        seconds = time.perf_counter() - t
        res = score(convert(folder, folder + "_release"), tests)
        tail = [v for s, v in losses.items() if s > run["steps"] - 100]
        res.update(run=run, train_s=round(seconds, 1), loss_last_100=round(float(np.mean(tail)), 4))
        results[run["name"]] = res
        print(json.dumps(res), flush=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
