"""examples/quickstart.ipynb runs from top to bottom, offline, on the tiny fixture checkpoint.

The notebook is executed by nbclient in a Jupyter kernel of THIS interpreter (sys.executable, the
project's .venv): a kernel spec written to a temporary JUPYTER_PATH, so neither a user-wide
`python3` kernel of another environment nor a missing `ipykernel install` changes what runs. The
kernel starts in the repository root, where the notebook's default paths point.
"""
import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
KERNEL = "vllama-jax-test"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook")
    spec = tmp / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {"JAX_PLATFORMS": "cpu",
           # The checkout's package, importable whether or not it was pip-installed into the venv.
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vllama-jax tests", "language": "python", "env": env}))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(tmp))  # searched before the user's and the environment's kernels
    mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))  # connection files
    mp.delenv("VLLAMA_MODEL", raising=False)
    mp.delenv("VLLAMA_VIDEO", raising=False)
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                         resources={"metadata": {"path": str(ROOT)}})
        try:
            client.execute()
        finally:  # what ran, for a look when a cell fails
            nbformat.write(nb, tmp / "quickstart.executed.ipynb")
    finally:
        mp.undo()
    return nb


def _outputs(nb, marker):
    """The outputs of the one code cell whose source contains `marker`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"{len(cells)} code cells contain {marker!r}"
    return cells[0].outputs


def _text(outputs):
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def test_notebook_has_no_errors_and_no_stored_outputs(executed):
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), "commit it without outputs"
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:80]


def test_default_parameters(executed):
    first = next(c for c in executed.cells if c.cell_type == "code")
    assert 'os.environ.get("VLLAMA_MODEL", "tests/data/fixtures/av_qwen2_clip_stc")' in first.source


def test_frames_are_shown(executed):
    out = _outputs(executed, "model.processor.video(VIDEO)")
    assert "frames (4, 3, 56, 56) float32" in _text(out)  # the fixture samples 4 frames of 56 px
    assert any("image/png" in o.get("data", {}) for o in out if o.output_type == "display_data")


def test_chat_answers(executed):
    assert "answer: '" in _text(_outputs(executed, "answer = model.chat("))


def test_batch_generate(executed):
    text = _text(_outputs(executed, "model.generate(input_ids"))
    assert "(2, 24) new tokens" in text
    assert "clip backwards: '" in text
