"""The demo (`vllama-jax demo`): its generated data, and a whole --quick run in a fresh process.

The generator must write media a model can learn from: real mp4 files whose decoded frames and sound
are the rendered scene, annotation files in the original's format that the training pipeline reads
without a bad row, and held-out questions of every kind whose answers follow from the scene. The
--quick run goes through every stage (data, the three phases for both connectors, the release
checkpoint, `vllama_jax.load`, the batched answer path) and must write results.json with every field;
the accuracy bar belongs to the default run, which the README reports.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import synthetic_qa as qa
from data_pipelines import synthetic_scenes as scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("demo") / "data")
    return qa.make_qa_dataset(folder, num_train=16, num_test=24, num_audio=6, seed=1, per_kind=6, progress=False)


def test_clip_decodes_to_the_rendered_scene(tmp_path):
    """The mp4's frames and sound track are the scene as rendered (up to codec loss)."""
    import av

    rng = np.random.default_rng(3)
    for i in range(4):
        scene = scenes.sample_scene(rng)
        path = str(tmp_path / f"c{i}.mp4")
        scenes.write_clip(path, scene)
        with av.open(path) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float64)
        with av.open(path) as c:
            sound = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        assert frames.shape == (scenes.FRAMES, scenes.SIZE, scenes.SIZE, 3)
        # yuv420p halves the colour resolution: edges blur, but a shape keeps its palette colour.
        assert np.mean(np.abs(frames - scenes.render_frames(scene))) < 8.0  # of 255
        palette = {name: np.array(rgb) for name, rgb in scenes.COLOURS.items()}
        for obj in scene.objects:
            k = scenes.FRAMES - 1
            x, y = (int(round(v)) for v in obj.position_at(k / scenes.FPS))
            centre = frames[k, y + scenes.OBJECT // 2 + 2, x + scenes.OBJECT // 2]
            nearest = min(palette, key=lambda n: np.abs(palette[n] - centre).sum())
            assert nearest == obj.colour_at(k / scenes.FPS), (obj, centre)
        wave = scenes.render_sound(scene)
        # AAC delays the track by its priming samples: find the lag, then the shapes must agree.
        lag = int(np.argmax(np.correlate(sound[:len(wave) + 4096], wave[:4000], mode="valid")))
        got = sound[lag:lag + len(wave)]
        assert np.corrcoef(got, wave[:len(got)])[0, 1] > 0.95, scene.sound


def test_scene_facts_are_in_the_pixels():
    """Every object is drawn in its colour where the scene says it is, and only once it has appeared."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = scenes.sample_scene(rng)
        frames = scenes.render_frames(scene)
        for obj in scene.objects:
            for k in (0, scenes.FRAMES // 2, scenes.FRAMES - 1):
                t = k / scenes.FPS
                x, y = (int(round(v)) for v in obj.position_at(t))
                if t < obj.appear:
                    continue
                c = scenes.OBJECT
                centre = frames[k, y + c // 2 + 2, x + c // 2]  # inside every shape, the triangle too
                assert tuple(centre) == scenes.COLOURS[obj.colour_at(t)], (obj, t)


def test_mean_pooling_cannot_tell_the_direction():
    """The mover is there from the first frame to the last, so the frames' average (all of them, or the
    model's 8) is the same for a mover and its opposite: only the frames' order tells the direction."""
    from vllama_jax.preprocess.video import uniform_indices

    rng = np.random.default_rng(11)
    assert all(scenes.sample_scene(rng).mover.appear == 0 for _ in range(200))
    sampled = uniform_indices(scenes.FRAMES, 8)
    for a, b in (("left", "right"), ("up", "down")):
        for seed in range(2):  # both bands
            movers = [scenes._mover(np.random.default_rng(seed), "circle", "red", 0.0, d) for d in (a, b)]
            clips = [scenes.render_frames(scenes.Scene((m,), d, scenes.Sound("tone", pitch="high"))).astype(float)
                     for m, d in zip(movers, (a, b))]
            assert not np.array_equal(clips[0], clips[1])
            np.testing.assert_array_equal(clips[0].mean(0), clips[1].mean(0))
            np.testing.assert_array_equal(clips[0][sampled].mean(0), clips[1][sampled].mean(0))


def test_clips_written_by_threads_are_those_of_one_thread(dataset, tmp_path, monkeypatch):
    """The clips are encoded a few at a time; the files are the same bytes as one thread writes, and a
    clip that cannot be written stops the dataset with its error."""
    import filecmp

    monkeypatch.setattr(qa, "WRITE_THREADS", 1)
    serial = qa.make_qa_dataset(str(tmp_path / "serial"), num_train=16, num_test=24, num_audio=6, seed=1,
                                per_kind=6, progress=False)
    names = sorted(os.listdir(os.path.join(dataset, "videos")))
    assert names == sorted(os.listdir(os.path.join(serial, "videos"))) and len(names) == 40
    for name in names + ["../video.json", "../av.json", "../audio.json", "../test.jsonl"]:
        assert filecmp.cmp(os.path.join(dataset, "videos", name), os.path.join(serial, "videos", name), shallow=False)

    def broken(path, scene):
        raise OSError(f"cannot write {path}")

    monkeypatch.setattr(qa, "write_clip", broken)
    with pytest.raises(OSError, match="cannot write"):
        qa.make_qa_dataset(str(tmp_path / "broken"), num_train=2, num_test=1, num_audio=1, progress=False)
    assert not os.path.exists(tmp_path / "broken")  # nothing half-written is left under the name


def test_every_question_kind_is_answerable(dataset):
    rows = qa.read_test_questions(dataset)
    assert {r["kind"] for r in rows} == set(qa.KINDS)
    for r in rows:
        assert os.path.isfile(os.path.join(dataset, r["video"]))
        assert r["av"] is True and 0 < r["chance"] < 1
        if r["options"]:
            assert r["answer"] in r["options"]
            assert r["letter"] == qa.LETTERS[r["options"].index(r["answer"])]
            assert r["chance"] == pytest.approx(1 / len(r["options"]))
            assert all(f"({qa.LETTERS[i]}) {o}" in r["question"] for i, o in enumerate(r["options"]))
        else:
            assert r["letter"] is None
            assert " " not in r["answer"]  # one word


def test_answers_follow_from_the_scene():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        for q in qa.scene_questions(scene):
            seen.add(q["template"])
            assert q["answer"] in q["choices"]
            if q["template"] == "direction":
                (vx, vy), d = scene.mover.velocity, q["answer"]
                assert {"right": vx > 0, "left": vx < 0, "down": vy > 0, "up": vy < 0}[d]
            if q["template"] == "count":
                assert q["answer"] == qa.NUMBERS[len(scene.objects) - 1]
            if q["template"] == "beeps":
                assert q["answer"] == qa.NUMBERS[len(scene.sound.beeps) - 1]
            if q["template"] == "sync":
                shape = q["question"].split("the ")[-1].split(" appeared")[0]
                obj = next(o for o in scene.objects if o.shape == shape)
                assert (q["answer"] == "yes") == (obj.appear == scene.sound.beeps[0])
    assert seen == {"colour", "shape", "direction", "first", "change", "count", "sound", "pitch", "beeps", "sweep",
                    "sync", "with_beep"}


def test_no_training_turn_answers_another():
    """In a training conversation no turn names the object that is another's answer ("What colour is the
    circle? red" then "What shape is the red one?"), and the rule draws from the generator what picking
    without it drew, so a seed's clips and held-out questions do not move."""
    import re

    rng = np.random.default_rng(3)
    shapes_kept = beeps_kept = 0
    for i in range(300):
        scene = scenes.sample_scene(rng)
        for name, row in qa._train_rows(f"v{i}.mp4", scene, rng, with_audio_row=True).items():
            conv = row["conversations"]
            turns = [(re.sub(r" \(A\).*", "", conv[k]["value"].split("\n")[-1]), conv[k + 1]["value"])
                     for k in range(0, len(conv), 2)]
            for j, (_, answer) in enumerate(turns):
                others = " ".join(q for k, (q, _) in enumerate(turns) if k != j)
                if answer in scenes.COLOURS or answer in scenes.SHAPES:  # an object's name
                    assert answer not in others.replace("?", " ").replace(",", " ").split(), (name, turns)
                shapes_kept += turns[j][0].startswith("What shape")
                beeps_kept += turns[j][0].startswith("How many beeps")
    assert shapes_kept > 50 and beeps_kept > 50  # the rule leaves shape (and count) questions to train on

    questions = [qa.as_asked(q, np.random.default_rng(0), False) for q in qa.scene_questions(scene)]
    for limit in (1, 3, 5, 50):
        a, b = np.random.default_rng(11), np.random.default_rng(11)
        picked = qa.pick(questions, limit, a)
        assert 1 <= len(picked) <= limit
        b.permutation(len(questions))
        b.permutation(min(limit, len(questions)))
        assert a.bit_generator.state == b.bit_generator.state


def test_annotations_train_without_a_bad_row(dataset, tmp_path):
    """Every phase file decodes into samples with the pipeline of `vllama-jax train`."""
    from data_pipelines.annotations import read_annotation_file
    from data_pipelines.samples import AUDIO_SHAPE, SampleDecoder, SampleSpec
    from vllama_jax.checkpoints.export import processor_config
    from vllama_jax.config import preset
    from vllama_jax.demo.run import corpus_texts
    from vllama_jax.demo.tokenizer import word_tokenizer

    cfg = preset("demo-av")
    tok = word_tokenizer(corpus_texts(dataset, qa.read_test_questions(dataset)))
    assert len(tok) <= cfg.decoder.vocab_size
    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "preprocessor_config.json").write_text(json.dumps(processor_config(cfg.vision)))
    limits = {"video.json": 112, "audio.json": 96, "av.json": 128}  # the phase configs' buckets
    for name, audio_from_video in (("video.json", False), ("audio.json", False), ("av.json", True)):
        rows = read_annotation_file(os.path.join(dataset, name), audio_from_video)
        assert rows and all("_error" not in r for r in rows)
        spec = SampleSpec(dataset, str(tmp_path / "tok"), str(tmp_path / "proc"), "qwen2", cfg.num_frames,
                          cfg.vision.image_size, True, limits[name])
        decode = SampleDecoder(spec)
        for row in rows[:3]:
            s = decode.decode(row)
            assert len(s["input_ids"]) <= limits[name]
            assert (s["labels"] != -100).sum() >= 2  # an answer word and <|im_end|>
            if name != "audio.json":
                assert s["video"].shape == (cfg.num_frames, 3, cfg.vision.image_size, cfg.vision.image_size)
            if name != "video.json":
                assert s["audio"].shape == AUDIO_SHAPE and s["audio"].std() > 1.0  # a sound, not silence


def test_scores_carry_their_standard_errors():
    from vllama_jax.demo.evaluate import paired_difference, score

    def rows(correct):
        return [{"id": i, "kind": "audio" if i < 4 else "spatial", "chance": 0.5, "correct": c}
                for i, c in enumerate(correct)]

    a, b = rows([1, 1, 1, 0, 1, 0]), rows([0, 1, 1, 0, 1, 1])
    s = score(a, ("spatial", "audio"))
    assert s["categories"] == {"spatial": 0.5, "audio": 0.75}
    # sample standard deviation / sqrt(n): audio 1,1,1,0 -> sqrt(0.25 / 4); spatial 1,0 -> sqrt(0.5 / 2)
    assert s["stderr"]["audio"] == pytest.approx(0.25)
    assert s["stderr"]["spatial"] == pytest.approx(0.5)
    gap = paired_difference(a, b, ("spatial", "audio"))
    assert gap["audio"]["difference"] == pytest.approx(0.25) and gap["audio"]["questions"] == 4
    assert gap["spatial"]["difference"] == pytest.approx(-0.5)  # (1 - 1 + 0 - 1) / 2
    assert gap["overall"]["difference"] == pytest.approx(0.0)


def test_multiple_choice_is_right_by_its_words_or_its_letter():
    from vllama_jax.demo.evaluate import is_correct

    mc = {"answer": "red", "letter": "B", "options": ["blue", "red", "green"]}
    assert is_correct("red", mc) and is_correct("Red.", mc) and is_correct("B", mc) and is_correct("(B)", mc)
    assert not is_correct("blue", mc) and not is_correct("A", mc) and not is_correct("red B", mc)
    assert not is_correct(None, mc) and not is_correct("", mc)
    short = {"answer": "two", "letter": None}
    assert is_correct("two", short) and not is_correct("B", short) and not is_correct("three", short)


def test_accuracy_by_answer_format():
    """The same templates asked short and as multiple choice are scored apart (hand-counted rows)."""
    from vllama_jax.demo.evaluate import by_format, by_template_format

    rows = [{"template": "count", "options": None, "chance": 1 / 3, "correct": True},
            {"template": "count", "options": None, "chance": 1 / 3, "correct": True},
            {"template": "count", "options": ["one", "two", "three"], "chance": 1 / 3, "correct": False},
            {"template": "pitch", "options": ["high", "low"], "chance": 0.5, "correct": True},
            {"template": "pitch", "options": None, "chance": 0.5, "correct": False}]
    f = by_format(rows)
    assert f["short"]["questions"] == 3 and f["short"]["accuracy"] == pytest.approx(2 / 3)
    assert f["short"]["chance"] == pytest.approx((1 / 3 + 1 / 3 + 0.5) / 3)
    assert f["multiple_choice"]["questions"] == 2 and f["multiple_choice"]["accuracy"] == pytest.approx(0.5)
    assert f["multiple_choice"]["stderr"] == pytest.approx(0.5)  # 1, 0: sample sd sqrt(0.5) / sqrt(2)
    assert by_template_format(rows) == {"count": {"multiple_choice": 0.0, "short": 1.0},
                                        "pitch": {"multiple_choice": 1.0, "short": 0.0}}


def test_steps_option_names_phases_and_counts():
    from vllama_jax.demo.run import DEFAULT, parse_steps, with_steps

    assert parse_steps(None) == {} and parse_steps("") == {}
    assert parse_steps("demo_video=4000, demo_av=700") == {"demo_video": 4000, "demo_av": 700}
    assert with_steps(DEFAULT, {"demo_video": 4000}).steps == {"demo_video": 4000}
    with pytest.raises(ValueError, match="unknown phase 'video'.*demo_video"):
        parse_steps("video=10")
    for bad in ("demo_av=0", "demo_av=-3", "demo_av=ten", "demo_av"):
        with pytest.raises(ValueError, match="demo_av needs a positive whole number"):
            parse_steps(bad)


@pytest.mark.slow
def test_quick_demo_writes_every_result(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, VLLAMA_JAX_CACHE=str(tmp_path / "jit"))
    # --steps replaces one phase's steps of the quick settings (the others keep theirs).
    proc = subprocess.run([sys.executable, "-m", "vllama_jax", "demo", "--out", str(out), "--quick", "--steps",
                           "demo_av=4"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.json") as f:
        r = json.load(f)
    for key in ("overall", "chance", "categories", "baseline_mean_pool", "examples", "timings"):
        assert key in r, key
    assert set(r["categories"]) == set(r["baseline_mean_pool"]) - {"overall"} == set(qa.KINDS)
    assert all(0 <= v <= 1 for v in list(r["categories"].values()) + list(r["baseline_mean_pool"].values()))
    assert 0 < r["chance"] < 1 and r["errors"] == {"stc": 0, "mean_pool": 0}
    assert set(r["stderr"]) == set(r["baseline_mean_pool_stderr"]) == set(qa.KINDS) | {"overall"}
    gap = r["stc_minus_mean_pool"]
    assert set(gap) == set(qa.KINDS) | {"overall"}
    for k in qa.KINDS:  # paired on the same questions: the difference of the two accuracies
        assert gap[k]["difference"] == pytest.approx(r["categories"][k] - r["baseline_mean_pool"][k])
    for v in ("stc", "mean_pool"):  # the same questions, split by answer format
        fmt = r["by_format"][v]
        assert sum(f["questions"] for f in fmt.values()) == sum(r["counts"].values())
        assert set(r["by_template_format"][v]) == set(r["by_template"][v])
    assert "mult. choice" in proc.stdout or "short" in proc.stdout
    assert r["examples"] and all({"question", "answer", "expected", "video"} <= set(e) for e in r["examples"])
    assert {"data_s", "cache_s", "total_s", "stc", "mean_pool"} <= set(r["timings"])
    for name in ("training_curves", "accuracy_per_kind", "stc_vs_mean_pool", "examples"):
        assert (out / r["plots"][name]).is_file()
    assert "overall" in proc.stdout and "mean pool" in proc.stdout  # the table
    # Each variant started from its calibrated init (release layout, written before its first phase).
    assert all((out / "runs" / v / "init" / "config.json").is_file() for v in ("stc", "mean_pool"))
    assert "calibrate_s" in r["timings"]["stc"]
    assert r["settings"]["steps"] == {"demo_video": 2, "demo_audio": 2, "demo_av": 4}
    with open(out / "runs" / "inputs.json") as f:  # what a rerun into this folder compares (reset_stale_runs)
        inputs = json.load(f)
    assert inputs["settings"]["steps"] == r["settings"]["steps"] and inputs["seed"] == 0
    assert set(inputs["annotations"]) == {"video.json", "audio.json", "av.json"}
    assert len(inputs["code"]) == 64  # the sources' digest: a rerun after a code update trains again
    with open(out / "runs" / "stc" / "demo_av" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f][-1] == 4
    # The checkpoint is in the release layout and loads back.
    assert (out / r["checkpoints"]["stc"] / "model.safetensors").is_file()

    # The sweep of the README's measurements runs from the demo's folder (benchmarks/demo_sweep.py):
    # the video phase through the train loop on clips rendered on the fly, scored on held-out ones.
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.demo_sweep", "--demo", str(out), "--out", str(sweep),
                           "--test-clips", "3", "--workers", "2", "tiny:stc:2:24:train.global_batch_size=8"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(sweep / "results.json") as f:
        tiny = json.load(f)["tiny"]
    assert 0 <= tiny["visual"] <= 1 and {"count", "direction"} <= set(tiny)
    assert tiny["run"] == {"name": "tiny", "variant": "stc", "steps": 2, "clips": 24,
                           "overrides": ["train.global_batch_size=8"]}
    with open(sweep / "tiny" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f][-1] == 2


def test_a_folder_from_an_earlier_generator_is_made_again(tmp_path):
    folder = str(tmp_path / "data")
    qa.make_qa_dataset(folder, num_train=2, num_test=1, num_audio=1, progress=False)
    done = os.path.join(folder, qa.DONE)
    with open(done) as f:
        stamp = json.load(f)
    assert stamp["format"] == qa.FORMAT
    with open(done, "w") as f:
        json.dump(dict(stamp, format=qa.FORMAT - 1), f)
    open(os.path.join(folder, "stale"), "w").close()
    qa.make_qa_dataset(folder, num_train=2, num_test=1, num_audio=1, progress=False)
    assert not os.path.exists(os.path.join(folder, "stale"))
    with open(done) as f:
        assert json.load(f) == stamp


def test_runs_trained_from_other_inputs_are_trained_again(tmp_path):
    from vllama_jax.demo.run import reset_stale_runs

    out = str(tmp_path)
    trained = os.path.join(out, "runs", "stc", "demo_video", "step")
    exported = os.path.join(out, "checkpoints", "stc", "config.json")

    def finished():
        for path in (trained, exported):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()

    inputs = {"settings": {"steps": {}}, "seed": 0, "annotations": {"video.json": "ab12"}, "code": "c0de"}
    finished()
    reset_stale_runs(out, inputs)  # runs without a record of their inputs: an earlier version's
    assert not os.path.exists(trained) and not os.path.exists(exported)
    finished()
    reset_stale_runs(out, json.loads(json.dumps(inputs)))  # the same inputs: kept for the rerun
    assert os.path.exists(trained) and os.path.exists(exported)
    reset_stale_runs(out, dict(inputs, annotations={"video.json": "cd34"}))  # other rows
    assert not os.path.exists(trained) and not os.path.exists(exported)
    finished()
    reset_stale_runs(out, dict(inputs, annotations={"video.json": "cd34"}, settings={"steps": {"demo_av": 400}}))
    assert not os.path.exists(trained)
    finished()
    reset_stale_runs(out, dict(inputs, annotations={"video.json": "cd34"}, settings={"steps": {"demo_av": 400}},
                               code="c0de2"))  # the same data and settings, other code
    assert not os.path.exists(trained) and not os.path.exists(exported)


def test_the_code_digest_names_the_sources_a_run_was_trained_with(tmp_path):
    from data_pipelines.demo_data import DEMO_DATA
    from vllama_jax.demo.run import code_digest
    from vllama_jax.evaluation.reproducibility import source_digest

    assert code_digest(DEMO_DATA) == code_digest(DEMO_DATA)
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.yaml").write_text("steps: 4\n")
    (pkg / "notes.md").write_text("not code\n")
    before = source_digest(str(pkg))
    (pkg / "notes.md").write_text("other notes\n")  # not a source file
    (pkg / "a.pyc").write_bytes(b"\0")
    assert source_digest(str(pkg)) == before
    for edit in (lambda: (pkg / "sub" / "b.yaml").write_text("steps: 5\n"),  # a config
                 lambda: (pkg / "sub" / "c.py").write_text(""),  # a new module
                 lambda: (pkg / "sub" / "c.py").rename(pkg / "c.py")):  # a moved one
        edit()
        assert source_digest(str(pkg)) != before
        before = source_digest(str(pkg))


def test_a_phase_cache_of_older_rows_is_decoded_again(tmp_path):
    from data_pipelines.demo_data import DEMO_DATA
    from vllama_jax.demo.recipe import phase_configs
    from vllama_jax.demo.run import Settings, prepare
    from vllama_jax.evaluation.reproducibility import sha256_file

    out = str(tmp_path)
    prepare(out, DEMO_DATA, Settings(num_train=4, num_test=1, num_audio=1, per_kind=1, steps={}), seed=0, progress=False)
    cfg = phase_configs(out, "stc")[0]  # demo_video: video.json
    DEMO_DATA.write_phase_cache(cfg)
    manifest = os.path.join(cfg.data.cache, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    DEMO_DATA.write_phase_cache(cfg)  # the same rows: kept
    assert os.stat(manifest).st_mtime_ns == stamp
    annotations = os.path.join(out, "data", "video.json")
    with open(annotations) as f:
        rows = json.load(f)
    with open(annotations, "w") as f:
        json.dump(rows[:-1], f)
    DEMO_DATA.write_phase_cache(cfg)  # other rows under the same name: decoded again
    with open(manifest) as f:
        made = json.load(f)
    assert made["sha256"] == [sha256_file(annotations)] and made["counts"][0]["rows"] == len(rows) - 1


def test_the_phase_caches_decode_each_clip_once_and_hold_what_decoding_gives(tmp_path):
    """build_caches shares one MediaCache across the phases: the joint phase's frames and the audio
    phase's clips' sound are the earlier phases' decodings, and every record equals an unshared cache's."""
    import glob

    from data_pipelines.demo_data import DEMO_DATA
    from vllama_jax.demo.recipe import build_caches, phase_configs
    from vllama_jax.demo.run import Settings, prepare
    from vllama_jax.train.config import replace_section

    out = str(tmp_path / "shared")
    prepare(out, DEMO_DATA, Settings(num_train=6, num_test=1, num_audio=2, per_kind=1, steps={}), seed=0, progress=False)
    cfgs = phase_configs(out, "stc")
    stats = build_caches(cfgs, DEMO_DATA)
    # video.json: 6 clips' frames decoded; audio.json: 2 clips' sound; av.json: 6 frames and 2 sounds
    # found, 4 sounds decoded and not kept (no later phase asks for them).
    assert (stats["misses"], stats["hits"], stats["entries"]) == (6 + 2 + 4, 6 + 2, 6 + 2)
    for cfg in cfgs:
        alone = replace_section(cfg, "data", cache=str(tmp_path / "alone" / os.path.basename(cfg.data.cache)))
        DEMO_DATA.write_phase_cache(alone)  # no media cache: every row decodes its clip
        shards = sorted(glob.glob(os.path.join(cfg.data.cache, "*", "*.array_record")))
        assert shards
        for shard in shards:
            rel = os.path.relpath(shard, cfg.data.cache)
            with open(shard, "rb") as a, open(os.path.join(alone.data.cache, rel), "rb") as b:
                assert a.read() == b.read(), rel

