"""Error answers on the wire: ``{"error": message}`` with a 4xx/5xx status, one pair for both sides.

The reader never trusts the body: a server (or someone in front of it on the plain port)
may answer with megabytes, non-JSON, or terminal escape sequences that a CLI would print.
The message is cut to `MAX_MESSAGE` characters and every control character but newline and
tab is shown as ``?``.
"""

from __future__ import annotations

import json
from typing import Final

__all__ = ["MAX_MESSAGE", "decode_error", "encode_error"]

MAX_MESSAGE: Final = 2000
"""Characters of a server's error message a client keeps (longer ones end in '...')."""


def encode_error(message: str) -> dict[str, str]:
    """The JSON object of an error answer."""
    return {"error": message}


def decode_error(body: bytes, fallback: str) -> str:
    """The message of an error answer: its ``error`` string, else the body as text, else ``fallback``."""
    head = body[: MAX_MESSAGE * 4 + 64]  # enough for the message; never parse megabytes for it
    text = ""
    try:
        obj = json.loads(body) if len(body) <= 1 << 20 else None
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        text = obj["error"]
    else:
        text = head.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text[: MAX_MESSAGE + 1]).strip()
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    return text or fallback
