"""`vllama-jax demo --out DIR [--quick]`: the README's main job, fully offline on a CPU.

Trains a tiny audio-visual VideoLLaMA 2 from scratch on synthetic clips (coloured shapes that move,
appear and change, with tones, beeps or chirps) through the recipe's phases, writes it as a release
checkpoint, loads it back with `vllama_jax.load` and answers questions about held-out clips; then the
same with the mean-pooling projector as the baseline. DIR/results.json holds the accuracy per kind
(spatial, temporal, counting, audio, audio-visual) against chance and the baseline; the plots and
example frames are beside it. The work is in vllama_jax/demo/.
"""
import logging

HELP = "train a tiny model on synthetic audio-visual QA and answer held-out clips -> DIR/results.json"


def add_arguments(p):
    p.add_argument("--out", required=True, help="output folder (reused: a rerun skips what is done)")
    p.add_argument("--quick", action="store_true", help="a few clips and steps: every stage, in a few minutes (CI)")
    p.add_argument("--seed", type=int, default=0, help="of the generated data")
    p.add_argument("--keep-cache", action="store_true", help="keep the decoded training rows (about 1 GB)")
    p.add_argument("--no-baseline", action="store_true", help="skip the mean-pooling baseline run")
    p.add_argument("--steps", default=None, metavar="PHASE=N[,PHASE=N]",
                   help="train steps of some phases (demo_video, demo_audio, demo_av) instead of the run's; "
                        "use a fresh --out (a finished phase is not trained again)")


def main(args) -> int:
    import os
    import sys

    from data_pipelines.demo_data import DEMO_DATA
    from vllama_jax.demo.report import table
    from vllama_jax.demo.run import DEFAULT, QUICK, parse_steps, run_demo, with_steps

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on every checkpoint read
    variants = ("stc",) if args.no_baseline else ("stc", "mean_pool")
    try:
        settings = with_steps(QUICK if args.quick else DEFAULT, parse_steps(args.steps))
    except ValueError as e:
        raise SystemExit(f"demo: {e}")
    # The command wires the two packages: data_pipelines gives the clips and batches, the library trains.
    results = run_demo(args.out, DEMO_DATA, quick=args.quick, seed=args.seed, variants=variants, keep_cache=args.keep_cache,
                       progress=sys.stderr.isatty(), settings=settings)
    print()
    print(table(results))
    for ex in results["examples"]:
        print(f"  [{ex['kind']}] {ex['question']} -> {ex['answer']!r} (expected {ex['expected']!r})")
    t = results["timings"]
    print(f"\n{t['total_s'] / 60:.1f} min; results in {os.path.join(args.out, 'results.json')}, plots: "
          + ", ".join(results["plots"].values()))
    return 0 if not any(results["errors"].values()) else 1
