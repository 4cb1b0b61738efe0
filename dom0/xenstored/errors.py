"""The one exception xenstored's handlers raise, and its wire conversion.

Handlers raise :class:`XsErr` with an ``xsd_errors`` name; :func:`error_payload`
is the single place where an exception becomes the ``XS_ERROR`` payload.
"""

from __future__ import annotations

from ring.xs_wire import encode_error

__all__ = ["XsErr", "error_payload"]


class XsErr(Exception):
    """A request failed with a XenStore error name (e.g. ``"ENOENT"``).

    Args:
        name: one of :data:`ring.xs_wire.XSD_ERRORS` (others go out as EINVAL).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def error_payload(exc: XsErr) -> bytes:
    """Wire payload for ``exc``: the error name plus NUL (unknown names: EINVAL)."""
    return encode_error(exc.name)
