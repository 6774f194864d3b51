"""Every module of the library imports, and the chat template renders, with requirements.txt alone.

Run by .ci/run in the runtime-only virtual environment (no test extras): a module-level import of a
package that only the tests bring (torch, timm, ...) or a missing runtime dependency (jinja2, which
transformers needs to render chat templates) fails here rather than on a user's fresh machine.
Modules that need an optional extra on purpose are listed in OPTIONAL with the extra they need.
"""
import importlib
import pkgutil
import sys

OPTIONAL = {}  # module -> the extra it needs (none so far)


def main() -> int:
    import data_pipelines
    import vllama_jax

    failed = []
    for pkg in (vllama_jax, data_pipelines):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name in OPTIONAL or info.name.endswith(".__main__"):  # __main__ runs the CLI
                continue
            try:
                importlib.import_module(info.name)
            except Exception as e:  # noqa: BLE001 -- report them all
                failed.append(f"{info.name}: {type(e).__name__}: {e}")
    # What `chat`, `answer`, `train` and `demo` do first with a tokenizer: render the chat template.
    from vllama_jax.demo.tokenizer import word_tokenizer
    from vllama_jax.preprocess.conversation import build_prompt
    try:
        build_prompt([{"role": "user", "content": "What colour is the circle?"}], "qwen2",
                     word_tokenizer(["What colour is the circle?"]), "video")
        build_prompt([{"role": "user", "content": "What colour is the circle?"}], "mistral",
                     word_tokenizer(["What colour is the circle?"]), "video")
    except Exception as e:  # noqa: BLE001
        failed.append(f"chat template: {type(e).__name__}: {e}")
    for f in failed:
        print("FAILED", f, file=sys.stderr)
    print(f"runtime imports: {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
