"""Check a running Ray cluster before a sweep: on every node, the GPUs Ray advertises against the CUDA devices torch
sees there and a few steps of a trial's training on each of them (its nets, batch size and compile mode), the
sweep's storage written and read from that node; the tracking server from the driver; token authentication; on
the head of a `ray up` AWS cluster, a dry-run launch of each worker type. One table, then each problem on a line of
its own; exit code 1 on any problem.

    python -m gkd_tune.doctor --space search_spaces/gompertz.yaml --address auto                     # on the head
    ray job submit --address http://127.0.0.1:8265 -- python -m gkd_tune.doctor --space ...          # as a Ray job

It checks the cluster it is given (--address, or RAY_ADDRESS), never a Ray of its own. GPU workers start on demand
(from 0 in cluster/gpu.yaml). Given a space, the doctor first asks the cluster for one trial's resources, as the
sweep does (and waits as long, resources.wait_s), so that a GPU worker is up to be checked. Without --space it
checks the nodes that are up, and neither storage nor tracking.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import run_command, shared_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.doctor", description=__doc__.split("\n\n")[0],
                                     parents=[shared_options(without_address="never a Ray of its own")])
    parser.add_argument("--space", type=Path, help="the space file of the sweep to come: its storage_path, "
                        "tracking.uri and resources are checked (without it: the nodes' GPUs and auth only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def diagnosis() -> int:
        from .cluster.doctor import diagnose

        return diagnose(args)

    return run_command(diagnosis, args.debug)

if __name__ == "__main__":
    sys.exit(main())
