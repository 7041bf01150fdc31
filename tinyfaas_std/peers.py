"""Who owns the client's end of a loopback connection: a uid, read from the kernel's socket table.

Strategy: functions share the host's network (README), so a function could reach this server's own admin API over
loopback. When each function runs under a uid of its own, the server asks, once per loopback connection, which
uid owns the client's socket (`/proc/net/tcp`, `/proc/net/tcp6`: the socket's address, port and uid), and the
handler serves function uids only the invocation routes. It asks only when a connection first wants an admin
route, so calls, and floods of idle connections, never read the table. `owner_uid` is a pure parser of that table; `peer_uid`
is the one reader. Connections from other hosts are not looked up (a function's traffic to the host's own
addresses comes from loopback or is the host's business: see the README).
"""

from __future__ import annotations

import ipaddress
import os

__all__ = ["owner_uid", "peer_uid", "UNKNOWN"]

UNKNOWN = -1  # a loopback peer whose socket was not found in the table: the caller decides, and refuses

_TABLES = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}
_READ = 4 * 1024 * 1024  # bytes asked per read: the whole table at once on any host this serves
_TRIES = 5               # reads of the table before a loopback peer counts as UNKNOWN


def _kernel_hex(host: str) -> tuple[int, str]:
    """The address as /proc/net/tcp{,6} prints it: each 32-bit word in the kernel's (little-endian) byte order."""
    packed = ipaddress.ip_address(host).packed
    words = [packed[i:i + 4][::-1] for i in range(0, len(packed), 4)]
    return (4 if len(packed) == 4 else 6), "".join(word.hex().upper() for word in words)


def owner_uid(table: str, host: str, port: int) -> int | None:
    """The uid owning the socket whose local address is host:port in `table` (the text of /proc/net/tcp{,6})."""
    at = table.find(f": {_kernel_hex(host)[1]}:{port:04X} ")  # one C-level scan, not a split of every line
    if at < 0:
        return None
    end = table.find("\n", at)
    fields = (table[at:] if end < 0 else table[at:end]).split()
    return int(fields[7]) if len(fields) > 7 and fields[7].isdigit() else None


def peer_uid(address: tuple) -> int | None:
    """The uid of the process that opened a loopback connection from `address`, UNKNOWN if it could not be found
    (a function could try to hide its socket by churning the table), None for a peer on another host."""
    host, port = address[0], address[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
        return None
    for _ in range(_TRIES):
        uid = owner_uid(_read_table(_TABLES[ip.version]), host, port)
        if uid is not None:
            return uid
    return UNKNOWN


def _read_table(path: str) -> str:
    """The table in as few reads as the kernel allows. It is not a snapshot: between two reads, sockets that come
    and go can shift the kernel's place in it, and a line can be missed (hence the tries above)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, _READ):
            chunks.append(chunk)
        return b"".join(chunks).decode("ascii", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
