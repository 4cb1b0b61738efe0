"""XenStore path rules (Xen's xenstored ``is_valid_nodename``/``canonicalize``).

* Absolute paths start with ``/``; characters ``A-Z a-z 0-9 - / _ @`` only;
  no ``//``; no trailing ``/`` except the root; total length <= 3072.
* A path not starting with ``/`` or ``@`` is relative to the connection's home
  ``/local/domain/<domid>``.
* For an unprivileged connection the part after ``/local/domain/<id>/`` (or the
  whole path when it is elsewhere) may be at most ``path_max`` (2048) long.
* ``@``-paths are special event names, valid only for WATCH/UNWATCH and
  GET/SET_PERMS.

Everything here is pure string work; callers pass peer bytes and get either a
canonical ``str`` or :class:`~dom0.xenstored.errors.XsErr` ``EINVAL``.
"""

from __future__ import annotations

import re

from ring.xs_wire import XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX

from .errors import XsErr

__all__ = [
    "SPECIAL_PATHS",
    "basename",
    "canonicalize",
    "decode_path",
    "domain_path",
    "get_parent",
    "is_child",
    "relative_to",
]

_VALID = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL = re.compile(r"/local/domain/(\d{1,5})/")
SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")


def domain_path(domid: int) -> str:
    """The home directory of ``domid``: ``/local/domain/<domid>``."""
    return f"/local/domain/{domid}"


def decode_path(raw: bytes) -> str:
    """Decode a path string from the wire.

    Args:
        raw: peer bytes (without the NUL terminator).

    Returns:
        The path as ``str``.

    Raises:
        XsErr: ``EINVAL`` for non-ASCII bytes.
    """
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XsErr("EINVAL") from None


def canonicalize(
    path: str, home: str, *, unprivileged: bool, path_max: int = XENSTORE_REL_PATH_MAX,
    allow_special: bool = False,
) -> str:
    """Turn a peer-supplied path into a valid absolute (or ``@``) path.

    Args:
        path: peer-controlled path text.
        home: the connection's home directory (set by xenstored).
        unprivileged: apply the relative-length quota (connection property).
        path_max: the relative-length quota (administrator setting).
        allow_special: accept ``@...`` names (WATCH, UNWATCH, GET/SET_PERMS).

    Returns:
        The canonical path.

    Raises:
        XsErr: ``EINVAL`` when the path breaks any rule in the module docstring.
    """
    if path.startswith("@"):
        if not allow_special or len(path) > path_max or not _VALID.match(path):
            raise XsErr("EINVAL")
        return path
    if not path.startswith("/"):
        path = f"{home}/{path}"
    if (
        len(path) > XENSTORE_ABS_PATH_MAX
        or (path.endswith("/") and path != "/")
        or "//" in path
        or not _VALID.match(path)
    ):
        raise XsErr("EINVAL")
    if unprivileged:
        m = _LOCAL.match(path)
        local = len(path) - (m.end() if m else 0)
        if local > path_max:
            raise XsErr("EINVAL")
    return path


def get_parent(path: str) -> str:
    """Parent of an absolute path (``/a/b -> /a``, ``/a -> /``); not for ``/``."""
    i = path.rfind("/")
    return path[:i] if i > 0 else "/"


def basename(path: str) -> str:
    """Last component of an absolute path other than ``/``."""
    return path[path.rfind("/") + 1:]


def is_child(child: str, parent: str) -> bool:
    """True if ``child`` equals ``parent`` or lies below it."""
    if child == parent or parent == "/":
        return True
    return child.startswith(parent) and child[len(parent):len(parent) + 1] == "/"


def relative_to(path: str, home: str) -> str:
    """Strip ``home + "/"`` from ``path`` for relative watches (unchanged otherwise)."""
    if path.startswith(home) and path[len(home):len(home) + 1] == "/":
        return path[len(home) + 1:]
    return path
