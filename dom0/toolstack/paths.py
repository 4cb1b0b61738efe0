"""Per-user default locations for xensim's sockets."""

from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/xensim`` if set, else ``/tmp/xensim-<uid>``.

    Unix socket paths are limited to 108 bytes, so the default stays short.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "xensim"
    return Path("/tmp") / f"xensim-{os.getuid()}"


def default_xenstored_socket() -> Path:
    """Where ``xensim xenstored`` listens unless told otherwise."""
    return runtime_dir() / "xenstored"
