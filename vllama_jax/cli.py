"""`vllama-jax` / `python -m vllama_jax`: one subcommand per module of `vllama_jax/commands/`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`, and
imports its heavy dependencies (JAX, transformers, torch) inside `main`, so `vllama-jax --help` stays fast.
"""
import argparse
import importlib
import sys

COMMANDS = ("chat", "answer", "serve", "dump", "train", "cache", "plan", "eval", "bench", "demo", "convert")


def _load(name):
    return importlib.import_module(f"vllama_jax.commands.{name}")


def build_parser():
    parser = argparse.ArgumentParser(prog="vllama-jax", description="VideoLLaMA 2 in JAX/Flax")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _load(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv=None) -> int:
    if argv is None:  # run as a program (not called from Python): malloc on huge pages (host_memory.py)
        from vllama_jax.host_memory import reexec_with_huge_pages

        reexec_with_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0 if not args.command else 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
