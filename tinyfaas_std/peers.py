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

__all__ = ["owner_uid", "peer_uid"]

_TABLES = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}


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
    """The uid of the process that opened a loopback connection from `address`; None for any other peer."""
    host, port = address[0], address[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if not (ip.is_loopback or (mapped is not None and mapped.is_loopback)):
        return None
    try:
        with open(_TABLES[ip.version]) as f:
            return owner_uid(f.read(), host, port)
    except OSError:
        return None
