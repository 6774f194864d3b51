"""The demo end to end: data -> phases -> release checkpoint -> `vllama_jax.load` -> held-out answers.

    results = run_demo("out/demo", data, quick=False)   # data: recipe.DemoData (data_pipelines.demo_data)

1. Data (`data.make_dataset`: data_pipelines/synthetic_qa.py): seeded mp4 clips with sound, annotation files in the
   original's format for each phase, held-out questions of five kinds; a word-level tokenizer of that
   text and the vision tower's pre-processing config.
2. For each variant, the STC connector (`demo-av`) and the mean-pooling baseline (`demo-av-meanpool`):
   the towers calibrated on training clips (calibrate.py), then the phases demo_video -> demo_audio ->
   demo_av with the real train code (recipe.py), the last
   checkpoint converted to the release layout, loaded back with `vllama_jax.load`, and every held-out
   question answered through `vllama-jax answer`'s batched path (evaluate.py).
3. DIR/results.json, a table on the terminal, plots and example frames (report.py).

results.json: {"overall", "chance", "categories": {kind: accuracy}, "stderr": {kind or "overall":
standard error}, "baseline_mean_pool": {kind: accuracy, "overall"}, "baseline_mean_pool_stderr",
"stc_minus_mean_pool": {kind or "overall": {"difference", "stderr", "questions"}} (paired, same questions),
"chance_by_kind", "counts", "by_template", "by_format" (short / multiple_choice: accuracy, stderr, chance,
questions), "by_template_format" (all three for both variants), "examples": [...], "timings": {...}, "settings",
"checkpoints"}. The accuracies are measured on this run; nothing is looked up. Rerunning into the same
folder reuses the data, caches and finished phases, as long as they were made from the same inputs:
data written by an earlier generator is written again (synthetic_qa.FORMAT), a cache of older rows
decoded again, and runs trained on other data, settings or code (runs/inputs.json) trained again.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import shutil
import sys
import time
from typing import Dict, Optional, Sequence

from tqdm import tqdm

import vllama_jax
from vllama_jax.answering import DEFAULT_MEDIA_CACHE_MB
from vllama_jax.checkpoints.export import processor_config
from vllama_jax.config import preset
from vllama_jax.demo import report
from vllama_jax.demo.evaluate import (answer_questions, by_format, by_template, by_template_format, paired_difference,
                                      score)
from vllama_jax.demo.recipe import (PHASES, VARIANTS, DemoData, build_caches, calibrated_init, export_run,
                                   phase_configs, train_variant)
from vllama_jax.demo.tokenizer import word_tokenizer
from vllama_jax.evaluation.reproducibility import sha256_file, source_digest
from vllama_jax.inference import enable_compilation_cache
from vllama_jax.preprocess.media_cache import media_cache
from vllama_jax.train.config import phase_config_path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    num_train: int  # training clips
    num_test: int  # held-out clips
    num_audio: int  # training clips with a row in the audio phase
    per_kind: int  # held-out questions per kind (at most)
    steps: Dict[str, int]  # per phase; a phase left out trains the steps of its config
    batch_size: int = 16
    answer_batch: int = 16
    fast_compile: bool = False  # train.fast_compile: half the compile time, slower steps (few steps: worth it)


# 100 held-out questions a kind: a kind's accuracy to within about 0.05 (one standard error).
DEFAULT = Settings(num_train=1200, num_test=200, num_audio=400, per_kind=100, steps={})
# For CI: every stage on a few clips and steps (the accuracy bar is the default run's).
QUICK = Settings(num_train=24, num_test=10, num_audio=8, per_kind=4,
                 steps={"demo_video": 2, "demo_audio": 2, "demo_av": 3}, batch_size=8, answer_batch=8,
                 fast_compile=True)


def parse_steps(text: Optional[str]) -> Dict[str, int]:
    """`--steps "demo_video=4000,demo_av=700"` -> {"demo_video": 4000, "demo_av": 700} (phases of recipe.PHASES)."""
    steps: Dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        phase, _, n = item.partition("=")
        phase = phase.strip()
        if phase not in PHASES:
            raise ValueError(f"--steps: unknown phase {phase!r} in {item!r}; phases: {', '.join(PHASES)}")
        if not n.strip().isdigit() or int(n) < 1:
            raise ValueError(f"--steps: {phase} needs a positive whole number of steps, got {n.strip()!r}")
        steps[phase] = int(n)
    return steps


def with_steps(settings: Settings, steps: Dict[str, int]) -> Settings:
    """`settings` with some phases' step counts replaced."""
    return dataclasses.replace(settings, steps={**settings.steps, **steps})


def corpus_texts(data_folder: str, questions: Sequence[dict]):
    """Every text of the demo: the phases' conversations and the held-out questions and answers."""
    for name in ("video.json", "audio.json", "av.json"):
        with open(os.path.join(data_folder, name)) as f:
            for row in json.load(f):
                yield from (t["value"] for t in row["conversations"])
    for q in questions:
        yield q["question"]
        yield q["answer"]


def prepare(out: str, data: DemoData, settings: Settings, seed: int, progress: bool) -> str:
    """Data, tokenizer and processor config under `out`; returns the data folder."""
    folder = data.make_dataset(os.path.join(out, "data"), settings.num_train, settings.num_test,
                               settings.num_audio, seed=seed, per_kind=settings.per_kind, progress=progress)
    tok = word_tokenizer(corpus_texts(folder, data.test_questions(folder)))
    for name in VARIANTS.values():
        if len(tok) > preset(name).decoder.vocab_size:
            raise ValueError(f"the demo's tokenizer has {len(tok)} ids, preset {name} only {preset(name).decoder.vocab_size}")
    tok.save_pretrained(os.path.join(out, "tokenizer"))
    os.makedirs(os.path.join(out, "processor"), exist_ok=True)
    with open(os.path.join(out, "processor", "preprocessor_config.json"), "w") as f:
        json.dump(processor_config(preset(VARIANTS["stc"]).vision), f, indent=1)
    return folder


def code_digest(data: DemoData) -> str:
    """The code a run is trained with (reproducibility.source_digest): vllama_jax, the package of the data
    side (data_pipelines) and the phases' configs (launch/configs)."""
    top = sys.modules[inspect.getmodule(data.make_dataset).__name__.split(".")[0]]
    paths = {os.path.dirname(vllama_jax.__file__), os.path.dirname(phase_config_path(PHASES[0])),
             os.path.dirname(top.__file__) if hasattr(top, "__path__") else top.__file__}
    return source_digest(*sorted(os.path.abspath(p) for p in paths))


def run_inputs(cfgs, settings: Settings, seed: int, code: str) -> dict:
    """What the trained runs depend on: the settings that shape training, the phases' annotation files
    and the code (`code_digest`: a rerun after an update trains again)."""
    files = {a.path: sha256_file(os.path.join(c.data.folder, a.path)) for c in cfgs for a in c.data.annotations}
    train = {k: v for k, v in dataclasses.asdict(settings).items() if k != "answer_batch"}
    return {"settings": train, "seed": seed, "annotations": files, "code": code}


def reset_stale_runs(out: str, inputs: dict) -> None:
    """Keep the runs under `out` (a rerun skips their finished phases) only if they were trained from
    `inputs`; otherwise remove them and the checkpoints exported from them, and record `inputs`."""
    runs, stamp = os.path.join(out, "runs"), os.path.join(out, "runs", "inputs.json")
    before = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            before = json.load(f)
    if before != inputs and os.path.isdir(runs):
        log.info("%s was trained from other data or settings: training again", runs)
        shutil.rmtree(runs)
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    os.makedirs(runs, exist_ok=True)
    with open(stamp + ".tmp", "w") as f:
        json.dump(inputs, f, indent=1)
    os.replace(stamp + ".tmp", stamp)


def _examples(rows, per_kind: int = 1):
    """The first question of each kind (a fixed choice, right or wrong)."""
    seen: Dict[str, int] = {}
    out = []
    for r in rows:
        if seen.get(r["kind"], 0) < per_kind:
            seen[r["kind"]] = seen.get(r["kind"], 0) + 1
            out.append({"id": r["id"], "kind": r["kind"], "video": r["video"], "question": r["question"],
                        "expected": r["expected"], "answer": r["answer"],
                        "correct": r["correct"]})
    return out


def run_demo(out: str, data_side: DemoData, quick: bool = False, seed: int = 0,
             variants: Sequence[str] = ("stc", "mean_pool"), keep_cache: bool = False, progress: bool = True,
             settings: Optional[Settings] = None) -> dict:
    settings = settings or (QUICK if quick else DEFAULT)
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    enable_compilation_cache()  # phases of one model share their init program; a rerun compiles nothing
    t_start = time.perf_counter()
    timings: Dict[str, object] = {}
    stages = ["data", "cache"] + [f"{v}: {p}" for v in variants for p in ("train", "answer")] + ["report"]
    bar = tqdm(total=len(stages), desc="demo", unit="stage", disable=not progress, position=0)

    def stage(name):
        bar.set_description(f"demo: {name}")

    stage("data")
    t = time.perf_counter()
    data = prepare(out, data_side, settings, seed, progress)
    questions = data_side.test_questions(data)
    timings["data_s"] = time.perf_counter() - t
    bar.update()

    stage("decoding the training rows once")
    t = time.perf_counter()
    cfgs = {v: phase_configs(out, v, settings.steps, settings.batch_size, progress_bar=progress,
                             fast_compile=settings.fast_compile) for v in variants}
    reset_stale_runs(out, run_inputs(cfgs[variants[0]], settings, seed, code_digest(data_side)))
    build_caches(cfgs[variants[0]], data_side)  # every variant reads the same rows the same way
    timings["cache_s"] = time.perf_counter() - t
    bar.update()

    scored, answered, checkpoints = {}, {}, {}
    clips = media_cache(DEFAULT_MEDIA_CACHE_MB)  # each clip decoded once for all its questions, both variants
    for v in variants:
        vt: Dict[str, float] = {}
        stage(f"{v}: training")
        t = time.perf_counter()
        calibrated_init(cfgs[v], data_side)
        vt["calibrate_s"] = time.perf_counter() - t
        train_variant(cfgs[v], data_side, on_phase=lambda name, s: vt.__setitem__(f"train_{name}_s", s))
        t = time.perf_counter()
        checkpoints[v] = export_run(cfgs[v][-1], os.path.join(out, "checkpoints", v))
        vt["export_s"] = time.perf_counter() - t
        bar.update()

        stage(f"{v}: answering {len(questions)} held-out questions")
        t = time.perf_counter()
        model = vllama_jax.load(checkpoints[v])
        vt["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = answer_questions(model, questions, data, batch_size=settings.answer_batch, media_cache=clips)
        vt["answer_s"] = time.perf_counter() - t
        answered[v] = rows
        scored[v] = score(rows, data_side.kinds)
        with open(os.path.join(out, f"answers_{v}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        timings[v] = vt
        bar.update()

    stage("report")
    main = scored[variants[0]]
    results = {
        "overall": main["overall"],
        "chance": main["chance"],
        "categories": main["categories"],
        "stderr": main["stderr"],
        "baseline_mean_pool": (dict(scored["mean_pool"]["categories"], overall=scored["mean_pool"]["overall"])
                               if "mean_pool" in scored else None),
        "baseline_mean_pool_stderr": scored["mean_pool"]["stderr"] if "mean_pool" in scored else None,
        "stc_minus_mean_pool": (paired_difference(answered["stc"], answered["mean_pool"], data_side.kinds)
                                if {"stc", "mean_pool"} <= set(answered) else None),
        "chance_by_kind": main["chance_by_kind"],
        "counts": main["counts"],
        "errors": {v: s["errors"] for v, s in scored.items()},
        "by_template": {v: by_template(rows) for v, rows in answered.items()},
        "by_format": {v: by_format(rows) for v, rows in answered.items()},
        "by_template_format": {v: by_template_format(rows) for v, rows in answered.items()},
        "examples": [],
        "timings": timings,
        "settings": dict(dataclasses.asdict(settings), quick=quick, seed=seed),
        "checkpoints": {v: os.path.relpath(c, out) for v, c in checkpoints.items()},
    }
    results["examples"] = _examples(answered[variants[0]])
    plots = {"training_curves": report.plot_training(
                 {v: [c.output_dir for c in cfgs[v]] for v in variants}, os.path.join(out, "training_curves.png")),
             "accuracy_per_kind": report.plot_accuracy(results, os.path.join(out, "accuracy_per_kind.png")),
             "examples": report.plot_examples(results["examples"], data, os.path.join(out, "examples.png"))}
    if results["baseline_mean_pool"]:
        plots["stc_vs_mean_pool"] = report.plot_stc_vs_pool(results, os.path.join(out, "stc_vs_mean_pool.png"))
    results["plots"] = {k: os.path.relpath(p, out) for k, p in plots.items()}
    if not keep_cache:
        shutil.rmtree(os.path.join(out, "cache"), ignore_errors=True)  # ~1 GB of decoded samples
    timings["total_s"] = time.perf_counter() - t_start
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    bar.update()
    bar.close()
    return results
