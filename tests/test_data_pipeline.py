"""The Grain data pipeline: annotation rows -> fixed-shape mixed batches, bad rows, sharding, state, cache.

Runs on a tiny generated dataset of real media (data_pipelines/synthetic.py) with the fixture
tokenizer and tiny CLIP pre-processing; no model is involved.
"""
import dataclasses
import json
import logging

import grain
import numpy as np
import pytest

from data_pipelines.annotations import read_annotation_file
from data_pipelines.pipeline import Source, TrainData, row_stream
from data_pipelines.samples import AUDIO_SHAPE, SampleDecoder, SampleSpec, collate
from data_pipelines.synthetic import make_dataset
from vllama_jax.config import AUDIO_TOKEN_INDEX, IGNORE_INDEX, IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX

from conftest import FIXTURES

FIXTURE = FIXTURES / "av_qwen2_clip_stc"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data") / "synthetic"), num_samples=12, audio=True)


@pytest.fixture(scope="module")
def spec(data_dir):
    return SampleSpec(data_folder=data_dir, tokenizer=str(FIXTURE), processor=str(FIXTURE / "clip-vit-tiny-patch14-56"),
                      family="qwen2", num_frames=4, image_size=56, has_audio_tower=True, model_max_length=128)


@pytest.fixture(scope="module")
def decoder(spec):
    return SampleDecoder(spec)


def _rows(data_dir, name, audio_from_video=False):
    return read_annotation_file(f"{data_dir}/{name}", audio_from_video)


def test_jsonl_keeps_a_broken_line_as_an_error_row(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"conversations": []}\n\nnot json\n[1, 2]\n')
    rows = read_annotation_file(str(path))
    assert len(rows) == 3
    assert "_error" not in rows[0] and rows[0]["_source"] == f"{path}:1"
    assert rows[1]["_source"] == f"{path}:3" and "not valid JSON" in rows[1]["_error"]
    assert "expected an object" in rows[2]["_error"]
    broken = tmp_path / "b.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match="b.json"):
        read_annotation_file(str(broken))


def test_mixed_batch_has_fixed_shapes_and_placeholders(data_dir, decoder):
    train = _rows(data_dir, "train.json")
    kinds = {k: next(r for r in train if r.get(k)) for k in ("video", "image", "audio")}
    text_only = next(r for r in train if not any(r.get(k) for k in ("video", "image", "audio")))
    av = _rows(data_dir, "av.json", audio_from_video=True)[0]
    samples = [decoder(r) for r in (kinds["video"], kinds["image"], kinds["audio"], text_only, av)]
    assert not any(s["bad"] for s in samples)
    batch = collate(samples, (64, 128), num_frames=4, image_size=56, has_audio_tower=True)

    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, 128)
    assert batch["video"].shape == (5, 4, 3, 56, 56) and batch["audio"].shape == (5,) + AUDIO_SHAPE
    np.testing.assert_array_equal(batch["has_video"], [True, True, False, False, True])
    np.testing.assert_array_equal(batch["has_audio"], [False, False, True, False, True])
    placeholders = [set(row[row < 0].tolist()) for row in batch["input_ids"]]
    assert placeholders == [{VIDEO_TOKEN_INDEX}, {IMAGE_TOKEN_INDEX}, {AUDIO_TOKEN_INDEX}, set(), {VIDEO_TOKEN_INDEX}]
    # An image is its frame repeated; padding rows are masked and carry no labels.
    np.testing.assert_array_equal(batch["video"][1, 0], batch["video"][1, 3])
    lengths = batch["attention_mask"].sum(1)
    for i, n in enumerate(lengths):
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (batch["input_ids"][i, n:] == 0).all()
        # Labels only on the answer: the prompt (with the placeholder) is ignored.
        labelled = np.nonzero(batch["labels"][i] != IGNORE_INDEX)[0]
        assert labelled.size and labelled.min() > np.argmax(batch["input_ids"][i] < 0)
    assert np.abs(batch["audio"][4]).sum() > 0  # the video's own sound track


def test_bad_rows_are_skipped_counted_and_logged(data_dir, decoder, caplog):
    rows = _rows(data_dir, "bad.jsonl")
    with caplog.at_level(logging.WARNING, logger="data_pipelines.samples"):
        samples = [decoder(r) for r in rows]
    assert [s["bad"] for s in samples] == [True, True, True, True, False]
    messages = [r.getMessage() for r in caplog.records]
    for line, reason in ((1, "missing file"), (2, "cannot decode"), (3, "not valid JSON"), (4, "no assistant turn")):
        assert any(f"bad.jsonl:{line}" in m and reason in m for m in messages), (line, reason, messages)
    batch = collate(samples, (64, 128), num_frames=4, image_size=56, has_audio_tower=True)
    assert batch["bad"].sum() == 4
    assert not batch["attention_mask"][:4].any() and (batch["labels"][:4] == IGNORE_INDEX).all()


def test_shuffle_reshuffles_each_epoch_and_mixes_by_weight():
    a = grain.MapDataset.source(list(range(10)))
    stream = row_stream([a], [1.0], seed=3)
    epoch1, epoch2 = [stream[i] for i in range(10)], [stream[i] for i in range(10, 20)]
    assert sorted(epoch1) == sorted(epoch2) == list(range(10)) and epoch1 != epoch2
    assert [row_stream([a], [1.0], seed=3)[i] for i in range(20)] == epoch1 + epoch2  # seeded
    b = grain.MapDataset.source(list(range(100, 110)))
    mixed = row_stream([a, b], [3.0, 1.0], seed=0)
    first = [mixed[i] for i in range(400)]
    assert abs(sum(x < 100 for x in first) / 400 - 0.75) < 0.02


def test_global_batch_is_the_same_for_any_number_of_processes(data_dir, spec):
    sources = [Source("train.json", 2.0), Source("av.json", 1.0, audio_from_video=True)]
    one = TrainData(sources, spec, global_batch=4, seed=1, buckets=(128,))
    halves = [TrainData(sources, spec, global_batch=4, seed=1, buckets=(128,), process_index=p, process_count=2)
              for p in range(2)]
    for k in (0, 3):
        whole = one.batches[k]
        parts = [h.batches[k] for h in halves]
        for key in whole:
            np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]), err_msg=key)


def test_iterator_state_resumes_at_the_same_batch(data_dir, spec):
    data = TrainData([Source("train.json")], spec, global_batch=2, seed=0, buckets=(128,))
    it = data.iterator()
    next(it), next(it)
    state = it.get_state()
    expected = next(it)
    restored = data.iterator()
    restored.set_state(json.loads(json.dumps(state)))  # what the grain checkpoint handler stores
    for got in (next(restored), next(data.iterator(start=2))):
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_a_cache_of_an_edited_annotation_file_is_refused(data_dir, spec, tmp_path):
    """Same path, other rows: training from the cache would read the old samples."""
    import shutil
    from data_pipelines.cache import write_cache
    from data_pipelines.records import check_manifest
    from vllama_jax.evaluation.reproducibility import sha256_file

    folder = tmp_path / "data"
    shutil.copytree(data_dir, folder)
    cache, path = str(tmp_path / "cache"), folder / "train.json"
    write_cache([Source("train.json")], dataclasses.replace(spec, data_folder=str(folder)), cache, dtype="float32")
    check_manifest(cache, ["train.json"], [sha256_file(str(path))])  # unchanged
    check_manifest(cache, ["train.json"], [None])  # a host without the file trains from the cache alone
    rows = json.loads(path.read_text())
    path.write_text(json.dumps(rows[:-1]))
    with pytest.raises(ValueError, match=r"train.json has changed since it was written"):
        check_manifest(cache, ["train.json"], [sha256_file(str(path))])
    with pytest.raises(ValueError, match=r"made from \['train.json'\], the config names \['av.json'\]"):
        check_manifest(cache, ["av.json"])
    manifest_path = tmp_path / "cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["sha256"]  # an earlier version's cache: accepted, with a warning that it is not checked
    manifest_path.write_text(json.dumps(manifest))
    check_manifest(cache, ["train.json"], [sha256_file(str(path))])


def test_array_record_cache_gives_the_decoded_batches(data_dir, spec, tmp_path):
    from data_pipelines.cache import write_cache
    sources = [Source("train.json"), Source("bad.jsonl")]
    manifest = write_cache(sources, spec, str(tmp_path / "cache"), records_per_shard=5, dtype="float32")
    assert manifest["counts"][1] == {"rows": 5, "bad": 4}
    decoded = TrainData(sources, spec, global_batch=4, seed=2, buckets=(64, 128))
    cached = TrainData(sources, spec, global_batch=4, seed=2, buckets=(64, 128), cache=str(tmp_path / "cache"))
    for k in range(3):
        want, got = decoded.batches[k], cached.batches[k]
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"batch {k} {key}")


def test_generated_dataset_is_written_once(tmp_path):
    folder = str(tmp_path / "gen")
    # Another process waits for process 0: it times out when nobody writes.
    with pytest.raises(TimeoutError):
        make_dataset(folder, num_samples=3, audio=False, process_index=1, timeout_s=0.3)
    make_dataset(folder, num_samples=3, audio=False)
    stamp = (tmp_path / "gen" / "DONE").stat().st_mtime_ns
    make_dataset(folder, num_samples=3, audio=False)
    make_dataset(folder, num_samples=3, audio=False, process_index=1)
    assert (tmp_path / "gen" / "DONE").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
