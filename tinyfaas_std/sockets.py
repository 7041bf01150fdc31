"""Kernel socket timeouts, shared by the HTTP layer and the worker channel.

A Python-level timeout (`settimeout`) makes CPython poll() before every recv/send and costs an ioctl per change.
On the hot path we keep sockets blocking and let the kernel time out instead (SO_RCVTIMEO/SO_SNDTIMEO): one
syscall per recv or send. An expired wait then fails with EAGAIN, which Python raises as `BlockingIOError`.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["set_timeouts"]


def set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Blocking mode, with receive and send timeouts of `seconds`."""
    sock.settimeout(None)
    seconds = max(seconds, 0.001)  # a zero timeval means "no timeout" to the kernel
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
