"""`vllama-jax train --config launch/configs/NAME.yaml [--set key=value ...]`: train (or resume) one phase.

Multi-host: every host runs the same command with `--coordinator HOST:PORT --num-processes N
--process-id I` (what `launch/tpu_pod.sh` and `launch/single_host.sh` pass), which calls
`jax.distributed.initialize` before anything touches a device; on CPU the collectives go over gloo.
On a TPU pod the three flags may be left out: JAX finds the pod's workers itself.
"""
from __future__ import annotations

import json
import logging

HELP = "train one phase from a YAML config (resumes from the latest checkpoint in its output_dir)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="a YAML config, e.g. launch/configs/smoke.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.steps=100 --set mesh.fsdp=8 (repeatable)")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="multi-host: process 0's address")
    parser.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() without arguments (TPU pods, SLURM)")


def init_distributed(coordinator=None, num_processes=None, process_id=None, auto: bool = False) -> None:
    """`jax.distributed.initialize` from the command line's flags (nothing to do without them)."""
    import jax
    if coordinator is None and not auto:
        return
    # Only the CPU backend reads this: CPU processes exchange collectives over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def main(args) -> int:
    init_distributed(args.coordinator, args.num_processes, args.process_id, args.distributed)
    import jax
    # Process 0 logs progress; the others only warnings and errors.
    logging.basicConfig(level=logging.INFO if jax.process_index() == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from absl import flags
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file it writes at INFO
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

    from data_pipelines.from_config import train_data
    from vllama_jax.train.config import load_train_config
    from vllama_jax.train.loop import train
    cfg = load_train_config(args.config, args.set)
    # The command wires the two packages: data_pipelines builds this process's batches, the library trains.
    data = train_data(cfg, cfg.model.resolve(), jax.process_index(), jax.process_count())
    losses = train(cfg, data)
    if jax.process_index() == 0 and losses:
        last = max(losses)
        print(json.dumps({"output_dir": cfg.output_dir, "last_step": last, "loss": losses[last]}))
    return 0
