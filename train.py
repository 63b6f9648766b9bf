#!/usr/bin/env python
"""minipost: one command line for every stage.  python train.py --stage dpo

Stages: pretrain, cpt, sft, probe, rm, dpo, grpo, rloo, ppo, all (`python train.py --help`
says what each does). `python train.py --stage NAME --help` lists the stage's flags with
their defaults.
"""
import sys

from minipost.checkpoint import CheckpointError
from minipost.cli import run
from minipost.data import DataError
from minipost.training import NonFiniteLoss

if __name__ == "__main__":
    try:
        run(sys.argv[1:])
    except (DataError, CheckpointError, NonFiniteLoss, FileNotFoundError) as e:
        # Problems with the user's data or checkpoints get one clear line, not a traceback.
        sys.exit(f"train.py: error: {e}")
