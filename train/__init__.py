"""Pretraining and evaluation for treemap's encoders (GeoTreeCLIP contrastive, SeCo-Eco seasonal contrast).

Each program here has one parser and one ``main(argv, prog)`` behind both spellings of its command line:
``python -m train.MODULE ...`` and ``treemap train NAME ...`` (see ``treemap.cli.TRAIN_COMMANDS``).
"""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse in treemap's manner: a usage mistake is one line, ``PROG: error: MESSAGE``, and exit code 2 (plain
    argparse prints the usage block before it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

