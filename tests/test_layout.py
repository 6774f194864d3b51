"""The house: the README's layout is the tree, and imports run one way.

Read from the source (the AST), nothing is imported:
- every file and folder of `vllama_jax/` is named in the README's layout section, and every name there exists;
- `vllama_jax` never imports `data_pipelines` (only `vllama_jax/commands/` wires the two), anywhere in a file;
- the project's module-level imports form no cycle (loading -> inference, never back).
"""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("vllama_jax", "data_pipelines", "benchmarks")


def modules():
    """{dotted module name: path} of the project's packages."""
    out = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")) and d != "results")
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                    name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                    out[name] = os.path.join(folder, f)
    return out


MODULES = modules()


def imported(path, top_level_only):
    """Project modules that the file at `path` imports (`from a import b` counts `a.b` when that is a module)."""
    tree = ast.parse(open(path).read(), path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including inside if / try blocks there
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n in MODULES}


def test_the_library_never_imports_data_pipelines():
    offenders = [f"{name} imports {dep}" for name, path in MODULES.items()
                 if name.startswith("vllama_jax") and not name.startswith("vllama_jax.commands")
                 for dep in sorted(imported(path, top_level_only=False)) if dep.startswith("data_pipelines")]
    assert offenders == []


def test_loading_and_inference_import_one_way():
    assert "vllama_jax.inference" in imported(MODULES["vllama_jax.loading"], top_level_only=False)
    assert "vllama_jax.loading" not in imported(MODULES["vllama_jax.inference"], top_level_only=False)


def test_module_level_imports_form_no_cycle():
    # A package's __init__ that re-exports its modules is not an edge back: `import a.b` runs a/__init__
    # first, so the edges that matter are module -> module.
    graph = {name: {d for d in imported(path, top_level_only=True) if d != name and not name.startswith(d + ".")}
             for name, path in MODULES.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def layout_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_names_every_part_of_the_package():
    block = layout_block()
    entries = sorted(f if f.endswith(".py") else f + "/" for f in os.listdir(os.path.join(ROOT, "vllama_jax"))
                     if not f.startswith(("__", ".")) and (f.endswith(".py") or
                                                           os.path.isdir(os.path.join(ROOT, "vllama_jax", f))))
    missing = [e for e in entries if not re.search(rf"^  {re.escape(e)}\s", block, re.M)
               and not re.search(rf"(^|[\s,(]){re.escape(e)}", block)]
    assert missing == []


@pytest.mark.parametrize("folder", ["layers", "models", "checkpoints", "preprocess", "train", "evaluation", "serve",
                                    "demo", "commands"])
def test_readme_layout_line_of_each_sub_package_matches_its_files(folder):
    """A sub-package's line names each of its modules (`decoder.py`, or the word `decoder`), and every
    `name.py` it mentions is there."""
    block = layout_block()
    line = re.search(rf"^  {folder}/\s+(.*?)(?=^  \S|^\S|\Z)", block, re.M | re.S).group(1)
    present = {f for f in os.listdir(os.path.join(ROOT, "vllama_jax", folder))
               if f.endswith(".py") and f != "__init__.py"}
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", line))
    assert named <= present, f"the README names {sorted(named - present)} in {folder}/"
    words = set(re.findall(r"[a-z_0-9]+", line))
    unnamed = sorted(f for f in present if f not in named and f[:-3] not in words)
    if folder == "commands":  # one file per subcommand: named by the CLI's own list
        from vllama_jax.cli import COMMANDS
        unnamed = [f for f in unnamed if f[:-3] not in COMMANDS]
    assert unnamed == [], f"the README's {folder}/ line does not name {unnamed}"
