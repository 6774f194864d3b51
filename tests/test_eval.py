"""`vllama-jax eval` end to end on the tiny video-only fixture checkpoint and generated mp4s: results.json
fields and counts (a corrupt annotation row, a missing video), resuming without generating, refusing a
changed setup, batch size not changing greedy answers, the scores of scripted answers worked out by hand;
one audio-visual run (`--av`) on the tiny audio-visual fixture; and, as unit tests, each benchmark's option
parser and prompt wording against the original's scripts, the MVBench, EgoSchema and Perception Test readers
and the open-ended scores."""
import json

import pytest

from data_pipelines.synthetic import write_video
from vllama_jax import cli
from vllama_jax.evaluation.datasets import EvalItem, read_benchmark
from vllama_jax.evaluation.prompts import MC_STYLES, instruction
from vllama_jax.evaluation.scoring import PARSE_RULES, contains_answer, exact_match, parse_option, summarize_oqa

from conftest import FIXTURES

MODEL = str(FIXTURES / "v_mistral_clip_stc")
TIMING = "timing"  # the only results.json field a rerun may change


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    write_video(str(d / "red.mp4"), "red", seconds=2.0, sound=False)
    write_video(str(d / "blue.mp4"), "blue", seconds=2.0, sound=False)
    rows = [
        {"id": "q1", "video": "red.mp4", "question": "What colour?", "options": ["red", "blue", "green"],
         "answer": 0, "task": "colour"},
        {"id": "q2", "video": "blue.mp4", "question": "What colour?", "options": ["red", "blue", "green"],
         "answer": "B", "task": "colour"},
        {"id": "q3", "video": "red.mp4", "question": "Which way?", "options": ["left", "right"], "answer": "right",
         "task": "motion"},
        {"id": "q4", "video": "blue.mp4", "question": "Which way?", "options": ["left", "right", "up", "down"],
         "answer": 1, "task": "motion", "start": 0.0, "end": 1.5},
        {"id": "q5", "video": "missing.mp4", "question": "What is it?", "options": ["a", "b"], "answer": 0,
         "task": "motion"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"id": "q6", "video": "red.mp4", "question": "x",
                                                                      "options": ["a", "b"], "answer": "Z"})]
    (d / "mcqa.jsonl").write_text("\n".join(lines) + "\n")
    return d


def run_eval(bench, out, *extra):
    return cli.main(["eval", "--model", MODEL, "--benchmark", "mcqa", "--data", str(bench / "mcqa.jsonl"),
                     "--media-root", str(bench), "--out", str(out), "--max-new-tokens", "4", *extra])


def read_results(out):
    return json.loads((out / "results.json").read_text())


def read_predictions(out):
    return {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def batched_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_b3")
    assert run_eval(bench, out, "--batch-size", "3") == 0
    return out


def test_results_count_every_row(batched_run):
    results = read_results(batched_run)
    preds = read_predictions(batched_run)
    # The tiny random model's answers: how many of them no option could be read from, counted in the file.
    unparsable = sum(p.get("pred", 0) is None for p in preds.values())
    # 5 good rows, one of them a missing video; a line that is not JSON and an answer that is no option skipped.
    assert results["counts"] == {"total": 5, "answered": 4, "unparsable": unparsable, "errors": 1, "skipped_rows": 2}
    assert [s["reason"] for s in results["skipped"]][1] == "answer 'Z' is not an index, a letter or one of the options"
    assert set(results["per_task"]) == {"colour", "motion"}
    assert results["per_task"]["motion"]["total"] == 3 and results["per_task"]["motion"]["errors"] == 1
    assert "missing.mp4" in preds["q5"]["error"] and "pred" not in preds["q5"]
    for i in ("q1", "q2", "q3", "q4"):
        assert preds[i]["output"] and preds[i]["pred"] in (None, *range(len(preds[i]["options"])))
    assert [preds[i]["answer"] for i in ("q1", "q2", "q3", "q4")] == [0, 1, 1, 1]
    # Accuracy is over all rows (errors and unparsable answers wrong), in percent.
    correct = sum(p.get("pred") == p["answer"] for p in preds.values())
    assert results["accuracy"] == pytest.approx(100.0 * correct / 5)


# Known answers for the bench rows (the missing video stays an error), each read as the mvbench parser reads it.
SCRIPTED = {"q1": "(A) red", "q2": "it is blue", "q3": "no idea", "q4": "(D) down"}


def test_scores_of_known_answers(bench, tmp_path, monkeypatch):
    def scripted(model, rows, batch_size, max_new_tokens, temperature, on_result, progress, media_cache=None):
        for row in rows:
            if row["id"] == "q5":
                on_result({"id": row["id"], "question": row["question"], "error": "FileNotFoundError: missing.mp4"})
            else:
                on_result({"id": row["id"], "question": row["question"], "answer": SCRIPTED[row["id"]]})

    monkeypatch.setattr("vllama_jax.load", lambda *a, **k: None)
    monkeypatch.setattr("vllama_jax.answering.answer_rows", scripted)
    assert run_eval(bench, tmp_path) == 0
    preds = read_predictions(tmp_path)
    # A, the option named "blue", nothing, D; against the answers A, B, B, B: two right of five rows.
    assert {i: (p.get("output"), p.get("pred")) for i, p in preds.items()} == {
        "q1": ("(A) red", 0), "q2": ("it is blue", 1), "q3": ("no idea", None), "q4": ("(D) down", 3),
        "q5": (None, None)}
    results = read_results(tmp_path)
    assert results["counts"] == {"total": 5, "answered": 4, "unparsable": 1, "errors": 1, "skipped_rows": 2}
    # No unparsable row has C for its answer, so the original's C fallback gains nothing here.
    assert (results["accuracy"], results["accuracy_as_original"]) == (40.0, 40.0)
    assert results["per_task"] == {
        "colour": {"accuracy": 100.0, "accuracy_as_original": 100.0, "total": 2, "correct": 2, "answered": 2,
                   "unparsable": 0, "errors": 0},
        "motion": {"accuracy": 0.0, "accuracy_as_original": 0.0, "total": 3, "correct": 0, "answered": 2,
                   "unparsable": 1, "errors": 1}}


def test_results_record_what_they_depend_on(batched_run):
    rep = read_results(batched_run)["reproducibility"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "clip-vit-tiny-patch14-56/model.safetensors"} \
        <= set(rep["model"]["files"])
    assert all(len(h) == 64 for h in rep["model"]["files"].values())
    assert len(rep["annotations"]["files"]["mcqa.jsonl"]) == 64
    assert {"vllama_jax", "jax", "jaxlib"} <= set(rep["versions"])
    assert (rep["dtype"], rep["num_frames"], rep["max_new_tokens"], rep["decoding"]) == ("float32", 4, 4, "greedy")
    assert rep["prompt_template"]["option"] == "({letter}) {option}\n"
    assert rep["style"] == "mvbench" and rep["answer_parser"]["text_fallback"] == "contains"
    assert rep["max_context"] == 1024  # the tiny fixture decoder's max_position_embeddings
    # The whole prompt of the first question: system message, then the video tag and the MC instruction, as
    # the original's mm_infer builds the user turn ("<video>" + "\n" + instruct).
    assert rep["example_prompt"].startswith("<s> [INST] <<SYS>>\nYou are a helpful")
    assert rep["example_prompt"].endswith("<</SYS>>\n\n<video>\nQuestion: What colour?\nOptions:\n(A) red\n(B) blue\n"
                                          "(C) green\nAnswer with the option's letter from the given choices directly "
                                          "and only give the best option. [/INST]")
    assert json.loads((batched_run / "setup.json").read_text()) == rep


def test_rerun_resumes_without_generating(bench, batched_run, monkeypatch):
    before = read_results(batched_run)
    lines = (batched_run / "predictions.jsonl").read_text()

    def no_model(*a, **k):
        raise AssertionError("a resumed run with every id answered must not load the model or generate")

    monkeypatch.setattr("vllama_jax.load", no_model)
    monkeypatch.setattr("vllama_jax.answering.answer_rows", no_model)
    assert run_eval(bench, batched_run, "--batch-size", "3") == 0
    after = read_results(batched_run)
    assert after[TIMING]["generated_this_run"] == 0
    assert {k: v for k, v in after.items() if k != TIMING} == {k: v for k, v in before.items() if k != TIMING}
    assert (batched_run / "predictions.jsonl").read_text() == lines


def test_rerun_with_another_setup_is_refused(bench, batched_run):
    lines = (batched_run / "predictions.jsonl").read_text()
    assert run_eval(bench, batched_run, "--max-new-tokens", "5") == 2
    assert (batched_run / "predictions.jsonl").read_text() == lines


def test_batch_size_does_not_change_answers(bench, batched_run, tmp_path):
    assert run_eval(bench, tmp_path, "--batch-size", "1") == 0
    one, three = read_predictions(tmp_path), read_predictions(batched_run)
    assert {i: r.get("output") for i, r in one.items()} == {i: r.get("output") for i, r in three.items()}
    strip = lambda r: {k: v for k, v in r.items() if k != TIMING}
    assert strip(read_results(tmp_path)) == strip(read_results(batched_run))


# Expected picks derived by reading each original parser (videollama2/eval/, main branch); None is where the
# original silently writes option C. ABC / ABCD / ABCDE: options of that many letters.
ABC, ABCD, ABCDE = ["x", "y", "z"], ["one", "two", "three", "four"], ["p", "q", "r", "s", "t"]
PARSER_CASES = {
    # inference_video_mcqa_mvbench.py lines 124-149: regex [\(,\ ]*[A-<last>][\),\ ]*, then option text.
    "mvbench": [
        ("(B) the cat", ["a dog", "the cat", "a bird"], 1),
        ("B.", ABC, 1),
        ("The answer is C", ABC, 2),
        ("Answer: A", ["x", "y"], 0),  # "Answer" is deleted first, so its capital A does not count
        ("(D) four", ABCD, 3),
        ("it is blue", ["red", "blue", "green"], 1),  # no letter: the first option named in the text
        ("E", ABC, None),  # a letter past the options
        ("garbage", ["red", "blue", "green"], None),
        ("Yes, B", ABC, None),  # the match is ", B", not a bare letter once stripped: the original guesses C
        ("Based on the video, (C)", ABC, 1),  # the original reads the B of "Based": so do we
    ],
    # inference_video_mcqa_egoschema.py lines 83-102: regex [\(\ ]*[A-E][\)\ ]*, no option-text fallback.
    "egoschema": [
        ("(E) they cook", ABCDE, 4),
        ("Yes, B", ABCDE, 1),  # a comma is no padding here, so the match is " B"
        ("Answer: A", ABCDE, 0),
        ("q", ABCDE, None),  # an option's text alone is not read: C in the original
        ("the man is cooking", ABCDE, None),
    ],
    # inference_video_mcqa_perception_test_mcqa.py lines 128-147: regex \(*[A-C]\)*, else an answer that
    # is exactly an option's text (lower-cased), else C.
    "perception_test": [
        ("(A)", ["left", "right", "up"], 0),
        ("Yes, B", ["left", "right", "up"], 1),
        ("Right", ["left", "right", "up"], 1),  # no capital A-C: the whole answer equals option B
        ("it went right", ["left", "right", "up"], None),  # containing an option is not enough
        ("D", ["left", "right", "up"], None),
        ("Cat", ["dog", "cow", "pig"], 2),  # the capital C of "Cat" is read as the letter
    ],
    # inference_video_mcqa_videomme.py lines 185-227 (options from line 267's '[A-D]\. (.*).', which drops
    # the trailing "."): regex [\(\ \[]*([A-D])[\)\.\ \]]*, else option text or a digit's word, else C.
    "videomme": [
        ("[C]", ["red.", "blue.", "green.", "3."], 2),
        ("B. blue", ["red.", "blue.", "green.", "3."], 1),
        ("three of them", ["red.", "blue.", "green.", "3."], 3),  # "3" also matches as "three"
        ("it is green", ["red.", "blue.", "green.", "3."], 2),
        ("E", ["red.", "blue.", "green.", "3."], None),
        ("nothing", ["red.", "blue.", "green.", "3."], None),
    ],
}


@pytest.mark.parametrize("style, text, options, expected",
                         [(style, *case) for style, cases in PARSER_CASES.items() for case in cases])
def test_option_parser_follows_each_original(style, text, options, expected):
    assert parse_option(text, options, style) == expected


def test_every_style_has_a_wording_and_a_parser():
    assert set(MC_STYLES) == set(PARSE_RULES) == set(PARSER_CASES)


def test_multiple_choice_prompts_are_the_originals():
    item = EvalItem(id=1, video="v.mp4", question="What is the man doing?", answer=0,
                    options=("cooking", "running", "sleeping", "reading"))
    # videollama2/eval/inference_video_mcqa_mvbench.py (main branch) lines 57-65: options as "({letter}) {c}\n",
    # instruct = f'Question: {question}\nOptions:\n{options_string}Answer with the option\'s letter ...'.
    assert instruction(item, "mvbench") == (
        "Question: What is the man doing?\nOptions:\n(A) cooking\n(B) running\n(C) sleeping\n(D) reading\n"
        "Answer with the option's letter from the given choices directly and only give the best option.")
    # inference_video_mcqa_perception_test_mcqa.py line 61: the same wording.
    assert instruction(item, "perception_test") == instruction(item, "mvbench")
    # inference_video_mcqa_egoschema.py line 65.
    assert instruction(item, "egoschema") == (
        "Select the best answer to the following multiple-choice question based on the video.\n"
        "What is the man doing?\nOptions:\n(A) cooking\n(B) running\n(C) sleeping\n(D) reading\n"
        "Answer with the option's letter from the given choices directly and only give the best option. "
        "The best answer is: ")
    # inference_video_mcqa_videomme.py lines 269-274 (the data's choices read "A. cooking").
    assert instruction(item, "videomme") == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only "
        "the letter (A, B, C, or D) of the correct option.\nWhat is the man doing?\nA. cooking\nB. running\n"
        "C. sleeping\nD. reading\nAnswer with the option's letter from the given choices directly and only give "
        "the best option. The best answer is: ")


def test_reads_the_originals_mvbench_layout(tmp_path):
    ann = tmp_path / "json"
    ann.mkdir()
    (ann / "action_sequence.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "What next?", "candidates": ["sit", "stand"], "answer": "stand",
         "start": 1.0, "end": 4.0},
        {"video": "b.mp4", "question": "What next?", "candidates": ["sit", "stand"], "answer": "jump"}]))
    (ann / "action_antonym.json").write_text(json.dumps([
        {"video": "c.webm", "question": "Which?", "candidates": ["x", "y", "z"], "answer": "z", "start": 1, "end": 2}]))
    (ann / "broken.json").write_text("[{")
    items, skipped = read_benchmark(str(ann), "/media", "mcqa")
    assert [(i.id, i.task, i.video, i.answer, i.start, i.end) for i in items] == [
        ("Action Sequence/0", "Action Sequence", "/media/star/Charades_v1_480/a.mp4", 1, 1.0, 4.0),
        # Action Antonym is not a bounded task in the original: its start/end are not used.
        ("Action Antonym/0", "Action Antonym", "/media/ssv2_video/c.webm", 2, None, None)]
    assert len(skipped) == 2  # the answer that is no candidate, the file that is not JSON


def test_reads_egoschemas_questions_file(tmp_path):
    # inference_video_mcqa_egoschema.py lines 45-62: q_uid names the video, "option 0".."option 4".
    (tmp_path / "q1.mkv").write_bytes(b"")
    rows = [{"q_uid": uid, "question": "What does c do?", **{f"option {i}": f"o{i}" for i in range(5)}}
            for uid in ("q1", "q2", "q3")]
    (tmp_path / "questions.json").write_text(json.dumps(rows))
    (tmp_path / "subset_answers.json").write_text(json.dumps({"q1": 4, "q2": 0}))
    items, skipped = read_benchmark(str(tmp_path / "questions.json"), str(tmp_path), "mcqa", "egoschema")
    assert [(i.id, i.video, i.options, i.answer) for i in items] == [
        ("q1", str(tmp_path / "q1.mkv"), ("o0", "o1", "o2", "o3", "o4"), 4),  # the format found on disk
        ("q2", str(tmp_path / "q2.mp4"), ("o0", "o1", "o2", "o3", "o4"), 0)]
    assert skipped == [{"where": f"{tmp_path / 'questions.json'} item 2", "reason": "no 'answer'"}]


def test_reads_perception_tests_questions_file(tmp_path):
    # inference_video_mcqa_perception_test_mcqa.py lines 42-65: {key: {"metadata": {"video_id"}, "mc_question"}}.
    data = {"video_1": {"metadata": {"video_id": "video_1"}, "mc_question": [
        {"id": 0, "question": "Which way?", "options": ["left", "right", "up"], "answer_id": 1, "area": "physics"},
        {"id": 1, "question": "How many?", "options": ["1", "2", "3"], "area": "memory"}]},
        "video_2": {"metadata": {"video_id": "video_2"}}}
    (tmp_path / "mc_question_valid.json").write_text(json.dumps(data))
    items, skipped = read_benchmark(str(tmp_path / "mc_question_valid.json"), "/media", "mcqa", "perception_test")
    assert [(i.id, i.video, i.task, i.answer) for i in items] == [
        ("video_1/0", "/media/video_1.mp4", "physics", 1)]
    assert [s["reason"] for s in skipped] == ["no 'answer'", "no 'mc_question' list of objects"]


def test_audio_visual_run(tmp_path):
    # Both videos carry a sound track, which --av gives the audio-visual fixture too; its audio alone is ~1500
    # tokens (the clip padded to 30 s), past the tiny decoder's default context, hence --max-context.
    write_video(str(tmp_path / "red.mp4"), "red", seconds=2.0, sound=True)
    write_video(str(tmp_path / "blue.mp4"), "blue", seconds=2.0, sound=True)
    data = tmp_path / "av.jsonl"
    data.write_text("\n".join(json.dumps({"id": i, "video": f"{c}.mp4", "question": "What colour?",
                                          "options": ["red", "blue", "green"], "answer": c, "task": "colour"})
                              for i, c in enumerate(("red", "blue"))) + "\n")
    out = tmp_path / "out"
    assert cli.main(["eval", "--model", str(FIXTURES / "av_qwen2_clip_stc"), "--benchmark", "mcqa", "--data", str(data),
                     "--media-root", str(tmp_path), "--out", str(out), "--av", "--max-context", "4096",
                     "--batch-size", "2", "--max-new-tokens", "4"]) == 0
    preds = read_predictions(out)
    assert sorted(preds) == [0, 1] and all("error" not in p and p["output"] for p in preds.values())
    results = read_results(out)
    unparsable = sum(p["pred"] is None for p in preds.values())
    assert results["counts"] == {"total": 2, "answered": 2, "unparsable": unparsable, "errors": 0, "skipped_rows": 0}
    rep = results["reproducibility"]
    assert rep["audio_visual"] is True and rep["max_context"] == 4096


def test_open_ended_scores_are_plain_string_matches():
    assert exact_match("A cat.", "a cat") and not exact_match("a black cat", "cat")
    assert contains_answer("a black cat", "cat") and not contains_answer("concatenate", "cat")
    stats = summarize_oqa([{"task": "t", "answer": "cat", "pred": "Cat"},
                           {"task": "t", "answer": "dog", "pred": "a big dog"},
                           {"task": "t", "answer": "cow", "error": "FileNotFoundError"}])["overall"]
    assert stats == {"exact_match": pytest.approx(100 / 3), "contains_answer": pytest.approx(200 / 3), "total": 3,
                     "answered": 2, "errors": 1}


def test_open_ended_run_writes_the_gpt_grading_file(bench, tmp_path):
    data = tmp_path / "oqa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"id": 7, "video": "red.mp4", "question": "What colour is the square?", "answer": "red"},
        {"id": 8, "video": "missing.mp4", "question": "What is it?", "answer": "nothing"}]) + "\n")
    out = tmp_path / "out"
    assert cli.main(["eval", "--model", MODEL, "--benchmark", "oqa", "--data", str(data), "--media-root", str(bench),
                     "--out", str(out), "--max-new-tokens", "4"]) == 0
    results = read_results(out)
    assert results["counts"] == {"total": 2, "answered": 1, "errors": 1, "skipped_rows": 0}
    assert "NOT the GPT" in results["note"]
    # The rows the original's eval_video_oqa_*.py --pred-path reads: id, question, answer (reference), pred.
    rows = [json.loads(l) for l in (out / "gpt_grading_input.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["answer", "id", "pred", "question"]] * 2
    assert rows[0]["question"] == "What colour is the square?" and rows[1]["pred"] == "error"
