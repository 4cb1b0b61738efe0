"""Xen's errno values (xen/include/public/errno.h), and the one exception type
that carries them out of a hypercall.

These are Xen's numbers, not the host's ``errno`` module: a simulation running
on a host whose libc numbers differ must still hand guests Xen's values. On
x86 Linux they happen to coincide.

Hypercall handlers raise :class:`XenError`; the hypercall dispatcher is the one
place that turns it into a negative return value for callers that want C
semantics (:func:`to_retval`).
"""

from __future__ import annotations

import enum


class Errno(enum.IntEnum):
    """Xen errno values (positive; hypercalls return the negation)."""

    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    EBADF = 9
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    ENOTDIR = 20
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    ESPIPE = 29
    EROFS = 30
    EMLINK = 31
    EPIPE = 32
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ENODATA = 61
    ETIME = 62
    EBADMSG = 74
    EOVERFLOW = 75
    EILSEQ = 84
    ERESTART = 85
    ENOTSOCK = 88
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111


class XenError(Exception):
    """A hypercall failed with a Xen errno.

    Args:
        errno: the Xen error (an :class:`Errno` or its integer value).
        message: a human explanation; never includes facts the caller may not
            learn (an unprivileged caller is never told whether another domain
            exists).
    """

    def __init__(self, errno: Errno | int, message: str = "") -> None:
        self.errno = Errno(errno)
        self.message = message
        super().__init__(f"{self.errno.name}: {message}" if message else self.errno.name)

    @property
    def retval(self) -> int:
        """The C-style hypercall return value: ``-errno``."""
        return -int(self.errno)


def to_retval(exc: XenError) -> int:
    """Convert a hypercall failure into the negative value a C caller sees."""
    return exc.retval
