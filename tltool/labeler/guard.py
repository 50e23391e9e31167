"""Who may talk to the labeler, and which files it may open.

* **Host** (DNS rebinding): a page on ``evil.example`` whose name is re-pointed at this machine sends
  ``Host: evil.example``. Only the names the server is really reached by pass: the address it is bound to, the
  address the connection arrived on, the machine's host name, and the loopback names.
* **Origin** (cross-site writes): browsers send ``Origin`` with every POST; a write whose Origin is not this
  server's own ``http://HOST`` is refused (``null`` included). A request with no ``Origin`` at all does not come from
  a web page (every current browser sends it on POST), so it is a script of the user's (curl, the benchmark) and is
  let through: CSRF needs a browser, and off loopback such a script still needs the token. ``Sec-Fetch-Site``,
  when present, must say ``same-origin`` or ``none`` (an image embedded by another site is refused too).
* **Token** (off loopback only, as Jupyter does): a random token is printed in the first URL; that request sets
  an HttpOnly, SameSite=Strict cookie, so the rest of the session carries it. Scripts may send
  ``Authorization: token TOKEN``.
* **Files**: :func:`open_inside` opens an image and then checks the *opened* file's real path (``/proc/self/fd``),
  so a symlink swapped in between a check and the open cannot lead out of the dataset folder.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
COOKIE = "tltool_labeler_token"
SAFE_FETCH_SITES = frozenset({"same-origin", "none"})
PROC_FD = "/proc/self/fd/{}"
HAS_PROC_FD = os.path.isdir("/proc/self/fd")


def host_name(header: str) -> str:
    """``"Example.org:8080"`` -> ``"example.org"``; ``"[::1]:80"`` -> ``"::1"``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def machine_names() -> set[str]:
    """This machine's host name and the addresses it resolves to (no network: /etc/hosts or the local resolver)."""
    names = {socket.gethostname().lower()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return names


@dataclass
class Guard:
    """The checks every request passes; ``token`` is None on loopback, where the Host check is enough."""

    bound_host: str
    token: str | None = None
    allowed_hosts: set[str] = field(default_factory=set)

    @classmethod
    def for_host(cls, host: str) -> "Guard":
        loopback = is_loopback(host)
        allowed = set(LOOPBACK_NAMES) if loopback else set(LOOPBACK_NAMES) | machine_names()
        unspecified = host in ("0.0.0.0", "::", "")
        if not unspecified:
            allowed.add(host.strip("[]").lower())
        return cls(host, None if loopback else secrets.token_urlsafe(24), allowed)

    def host_ok(self, header: str | None, local_address: str) -> bool:
        """The Host header names this server: one of the allowed names, or the address the client connected to."""
        name = host_name(header or "")
        return bool(name) and (name in self.allowed_hosts or name == local_address.lower())

    def origin_ok(self, origin: str | None, host_header: str | None, fetch_site: str | None) -> bool:
        """Same-origin or not from a web page at all (see the module's docstring)."""
        if fetch_site is not None and fetch_site.lower() not in SAFE_FETCH_SITES:
            return False
        if origin is None:
            return True
        parts = urlsplit(origin.strip())
        return parts.scheme == "http" and parts.netloc.lower() == (host_header or "").strip().lower()

    def token_in(self, path: str, cookie: str | None, authorization: str | None) -> str | None:
        """The token a request carries: ``?token=`` in the URL, the cookie, or ``Authorization: token ...``."""
        query = parse_qs(urlsplit(path).query).get("token")
        if query:
            return query[0]
        if authorization and authorization.lower().startswith("token "):
            return authorization[6:].strip()
        for part in (cookie or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == self.cookie_name:
                return value
        return None

    @property
    def cookie_name(self) -> str:
        """Cookies ignore ports: each labeler's cookie is named after its own token, so two never collide."""
        return f"{COOKIE}_{(self.token or '')[:8]}"

    def token_ok(self, offered: str | None) -> bool:
        """Compared as bytes: ``compare_digest`` raises TypeError on a str with non-ASCII characters
        (``?token=%C3%A9``), which dropped the connection without an answer and printed a traceback."""
        if self.token is None:
            return True
        return offered is not None and hmac.compare_digest(offered.encode("utf-8", "replace"), self.token.encode())

    def cookie_header(self) -> str:
        return f"{self.cookie_name}={self.token}; HttpOnly; SameSite=Strict; Path=/"


class OutsideRoot(PermissionError):
    """The file opened lies outside the dataset folder (told apart from a file the server may not read)."""


def open_inside(root: Path, rel: str) -> int:
    """A read-only descriptor of ``root/rel``, verified *after* opening to be a regular file inside ``root``.

    Raises :class:`OutsideRoot` when the opened file lies outside ``root`` (a symlink swapped in after any earlier
    check), ``FileNotFoundError`` when it is not a regular file, and the ``OSError`` of the open itself (a
    ``PermissionError`` for a photo the server may not read). The caller closes the descriptor.
    """
    fd = os.open(root / rel, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        real = Path(os.readlink(PROC_FD.format(fd))) if HAS_PROC_FD else _fallback_real(fd, root / rel)
        if real != root and root not in real.parents:
            raise OutsideRoot(f"{rel} leads outside {root}")
        if not _is_regular(fd):
            raise FileNotFoundError(rel)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _fallback_real(fd: int, path: Path) -> Path:
    """Without /proc: the resolved path, accepted only if it is the very file that was opened (same inode)."""
    real = Path(os.path.realpath(path))
    opened, named = os.fstat(fd), os.stat(real)
    if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        raise OutsideRoot(f"{path} changed while it was opened")
    return real


def opened_path(fd: int, path: Path) -> str:
    """A path that reads the already-open file: the /proc magic link does not re-resolve the name (Linux).
    Elsewhere the name itself, checked against the descriptor's inode just before (a narrow race remains)."""
    return PROC_FD.format(fd) if HAS_PROC_FD else str(path)
