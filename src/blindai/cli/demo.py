"""``blindai demo``: the main job (semantic search) or the seed's hello world (``--speech``)."""

from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    if args.speech:
        from ..demo_speech import run_speech_demo

        return run_speech_demo(args.audio)
    from ..demo import run_demo

    return run_demo(query=args.query)
