"""The labeler's web server: standard library only (``http.server``), one page, a JSON API and the images.

Routes: ``GET /`` (the page), ``GET /app.js``, ``GET /app.css``, ``GET /api/state``, ``GET /img/<path>`` (an image
under the dataset root, decoded with the shared :func:`tltool.images.load_image` and sent as a JPEG), and
``POST /api/set`` with ``{"path", "label" (or null), "skipped", "assisted", "expect"}`` (or ``{"items": [...]}`` of
them, one write; ``expect``, optional: the ``{"label", "skipped"}`` the page believes the photo has, refused with
409 when another tab changed it since), ``GET /api/assist``, ``GET /api/grid`` and ``POST /api/confirm`` (assistance). Paths that leave the
dataset root (``..``, ``%2e%2e``, absolute paths, symlinks pointing outside, a link swapped in after the check)
are refused with 403.
Every request passes :class:`tltool.labeler.guard.Guard` (Host, Origin, and off loopback a token).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

from ..errors import BadImageError, TltoolError
from ..images import load_image
from ..utils import shortened
from .assist import Assistant, AssistSettings, Featurize
from .guard import Guard, OutsideRoot, opened_path, open_inside
from .store import LabelStore, inside_root, is_image_name

DISPLAY_SIDE = 1280  # images are sent at most this large: the page never needs more
MAX_BODY = 64 * 1024
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class _JpegCache:
    """The last few encoded images, so moving back and forth does not decode again."""

    def __init__(self, size: int = 64) -> None:
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, root: Path, rel: str) -> bytes:
        """The JPEG of ``root/rel``; the file is opened first and checked where it really is (no swap race)."""
        fd = open_inside(root, rel)
        try:
            st = os.fstat(fd)
            key = (rel, st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            pixels = load_image(opened_path(fd, root / rel))
        finally:
            os.close(fd)
        return self._encode(key, pixels)

    def _encode(self, key: tuple, pixels) -> bytes:
        im = Image.fromarray(pixels)
        if max(im.size) > DISPLAY_SIDE:
            im.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return data


_BUSY_TEXT = b"The labeler is serving as many connections as it allows; try again in a few seconds.\n"
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT))


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, none past :attr:`deadline` (``time.monotonic()``): a socket timeout bounds one read
    only, so a client sending a byte every few seconds kept a connection (and its slot) for good."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket) -> None:
        super().__init__()
        self.raw, self.sock = raw, sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        if self.deadline is None:
            return self.raw.readinto(buffer)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        timeout = self.sock.gettimeout()  # kept for the writes of the answer
        self.sock.settimeout(left if timeout is None else min(left, timeout))
        try:
            return self.raw.readinto(buffer)
        finally:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        self.raw.close()
        super().close()


class LabelerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 can overflow (and reset connections) when many clients connect at once
    max_connections = 128  # served at once, each on a thread; one more gets BUSY_RESPONSE (a browser opens ~6)
    max_per_client = 32  # of them from one address: one machine opening connections as fast as they are closed
    # (each must send its request within 20 s) held every slot; now the others keep max_connections - 32

    def process_request(self, request: socket.socket,
                        client_address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """Serve on a new thread while fewer than :attr:`max_connections` are open, :attr:`max_per_client` of them
        from this client's address: a client holding thousands of idle connections made as many threads, each kept
        for the 120 s idle timeout (a request must now arrive whole within
        :attr:`LabelerHandler.first_request_timeout`)."""
        if not self._take_slot(client_address[0]):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._free_slot(client_address[0])
            raise

    def _take_slot(self, host: str) -> bool:
        with self._per_client_lock:
            if self._per_client.get(host, 0) >= self.max_per_client or not self._slots.acquire(blocking=False):
                return False
            self._per_client[host] = self._per_client.get(host, 0) + 1
            return True

    def _free_slot(self, host: str) -> None:
        with self._per_client_lock:
            self._per_client[host] -= 1
            if not self._per_client[host]:
                del self._per_client[host]
            self._slots.release()

    def _refuse_busy(self, request) -> None:
        """Say why on the serving thread without waiting for anything: the response fits a new socket's send buffer,
        and what the client sent already is read first, so closing does not reset the connection before the client
        reads the 503 (a request arriving later still may)."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(BUSY_RESPONSE)
            with contextlib.suppress(BlockingIOError):
                for _ in range(4):  # bounded: a client streaming bytes must not hold the serving thread
                    if not request.recv(65536):
                        break
        self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket,
                               client_address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slot(client_address[0])

    def handle_error(self, request: socket.socket,
                     client_address: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """A browser that closes a connection early (leaving the page, prefetch cancelled) is not an error worth a
        traceback on the user's terminal; anything else is still reported."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, store: LabelStore, host: str = "127.0.0.1", port: int = 0, quiet: bool = True,
                 assistant: Assistant | None = None) -> None:
        self.store = store
        self.quiet = quiet
        self.assistant = assistant
        self.images = _JpegCache()
        self.guard = Guard.for_host(host)
        self.address_family = _family(host)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._per_client: dict[str, int] = {}  # open connections by client address
        self._per_client_lock = threading.Lock()
        try:
            super().__init__((host, port), LabelerHandler)
        except OSError as exc:
            raise TltoolError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass --port 0 for any free "
                              "port, or another --host.") from None

    def server_close(self) -> None:
        if self.assistant is not None:
            self.assistant.stop()
        super().server_close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn), which can stall for seconds offline
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The address to open; off loopback it carries the token (the page then keeps it in a cookie)."""
        host = self.server_address[0]
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        token = f"?token={self.guard.token}" if self.guard.token else ""
        return f"http://{host}:{self.port}/{token}"

    @property
    def loopback(self) -> bool:
        return self.guard.token is None


def _family(host: str):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_server(dataset: str | os.PathLike, classes: list[str] | None, host: str = "127.0.0.1", port: int = 0,
                review: str | os.PathLike | None = None, quiet: bool = True, assist: AssistSettings | None = None,
                featurize: Featurize | None = None) -> LabelerServer:
    """A labeler for ``dataset`` bound to ``host:port`` (0: any free port); call ``serve_forever()`` on it.

    With ``assist`` (or a ``featurize`` function, as tests pass) features are extracted in the background and a
    head suggests labels (:mod:`tltool.labeler.assist`)."""
    store = LabelStore(dataset, classes, review)
    assistant = Assistant(store, assist, featurize) if assist is not None or featurize is not None else None
    server = LabelerServer(store, host, port, quiet=quiet, assistant=assistant)
    if assistant is not None:
        assistant.start()
    return server


class LabelerHandler(BaseHTTPRequestHandler):
    server: LabelerServer
    protocol_version = "HTTP/1.1"
    server_version = "tltool-labeler"
    timeout = 120  # a keep-alive connection is closed when its next request is not in after this many seconds
    # ... and the first request (line, headers and body) within these of the connect: each open connection holds one
    # of the server's max_connections, so bare connects left open could keep the user out for the full idle timeout
    first_request_timeout = 20
    # headers and body leave in two writes: with Nagle's algorithm the body waited for the client's delayed ACK
    # (measured: 45-50 ms per response on a keep-alive connection; 4 ms without)
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.first_request_timeout)
        self._reader = _DeadlineReader(self.rfile.detach(), self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._waited = self.first_request_timeout

    def handle_one_request(self) -> None:
        """One request, read whole within the wait from its start (its line, headers and any body; past it, the
        connection is closed): per read, a client trickling bytes was never timed out."""
        self._reader.deadline = time.monotonic() + self._waited
        super().handle_one_request()
        self.connection.settimeout(self.timeout)  # after a request, the keep-alive idle timeout
        self._waited = self.timeout

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.server.quiet:
            super().log_message(format, *args)

    def parse_request(self) -> bool:
        # per request (one handler object serves every request of a keep-alive connection); not while parsing, where
        # an interim "100 Continue" is sent before the body
        self._body_used = True
        self._refused = False
        parsed = super().parse_request()
        self._body_used = False
        return parsed

    def _body_left(self) -> bool:
        """Whether the request carries a body this handler did not read. Left there, it would be read as the next
        request of the connection: a refused cross-site ``text/plain`` POST could smuggle a POST without Origin."""
        if getattr(self, "_body_used", False) or not hasattr(self, "headers"):
            return False
        length = self.headers.get("Content-Length")
        if not self._one_length():
            return True
        try:
            return length is not None and int(length) != 0
        except ValueError:
            return True

    def _one_length(self) -> bool:
        """Whether the body is framed by one Content-Length (or absent): no other framing is ever read."""
        return self.headers.get("Transfer-Encoding") is None and len(self.headers.get_all("Content-Length") or []) < 2

    def end_headers(self) -> None:
        """Every answer to a request whose body was not read (or that was refused) closes the connection, after
        reading that body (when small) so that closing does not reset the connection before the client reads the
        answer."""
        if not self.close_connection and (self._body_left() or getattr(self, "_refused", False)):
            self.send_header("Connection", "close")  # sets close_connection
            self._discard_body()
        super().end_headers()

    def _discard_body(self) -> None:
        """Read and drop an unused body up to MAX_BODY; a larger one (or one framed otherwise) is left to the close."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if 0 < length <= MAX_BODY and self._one_length():
            try:
                self.connection.settimeout(2)  # a client that promised more than it sends is not waited for long
                self.rfile.read(length)
            except OSError:
                pass

    def _send(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; connect-src 'self'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _refuse(self, reason: str) -> None:
        """403, and the connection closed: off loopback, a client without the token that sent a request now and
        then kept its connection, and one of the server's max_connections, for good."""
        self._refused = True
        self._error(HTTPStatus.FORBIDDEN, reason)

    def _refusal(self, write: bool) -> str | None:
        """Why this request is refused (None: let it through). See :mod:`tltool.labeler.guard`."""
        guard, headers = self.server.guard, self.headers
        if not guard.host_ok(headers.get("Host"), self.connection.getsockname()[0]):
            return "unexpected Host header"
        fetch_site = headers.get("Sec-Fetch-Site")
        if (write or fetch_site is not None) and not guard.origin_ok(headers.get("Origin"), headers.get("Host"),
                                                                   fetch_site):
            return "cross-origin request refused"
        offered = guard.token_in(self.path, headers.get("Cookie"), headers.get("Authorization"))
        if not guard.token_ok(offered):
            return "token missing or wrong: open the URL the labeler printed (it carries ?token=...)"
        return None

    def _welcome(self) -> None:
        """The first visit with ``?token=``: keep the token in a cookie and drop it from the address bar."""
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", urlsplit(self.path).path or "/")
        self.send_header("Set-Cookie", self.server.guard.cookie_header())
        self.send_header("Content-Length", "0")
        self.end_headers()

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        refusal = self._refusal(write=False)
        if refusal:
            return self._refuse(refusal)
        parts = urlsplit(self.path)
        route = parts.path
        if self.server.guard.token and "token=" in parts.query and route == "/":
            return self._welcome()
        if route in STATIC:
            name, content_type = STATIC[route]
            return self._send(HTTPStatus.OK, _static(name), content_type)
        if route in GET_ROUTES:
            try:
                return GET_ROUTES[route](self, parse_qs(parts.query))
            except TltoolError as exc:  # the dataset's files (a lock or labels.csv made a link since): say so
                return self._error(HTTPStatus.CONFLICT, str(exc))
        if route.startswith("/img/"):
            return self._image(route[len("/img/"):])
        if route == "/favicon.ico":
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def _get_state(self, query: dict) -> None:
        state = self.server.store.state()
        assistant = self.server.assistant
        self._json(HTTPStatus.OK, {**state, "assist": assistant.status() if assistant else None})

    def _get_assist(self, query: dict) -> None:
        """Suggestions, their order and the honesty figures (``?since=REVISION``: only the figures when unchanged)."""
        assistant = self.server.assistant
        if assistant is None:
            return self._json(HTTPStatus.OK, {"state": "off"})
        since = (query.get("since") or [""])[0]
        unchanged = since == str(assistant.revision)
        self._json(HTTPStatus.OK, assistant.status() if unchanged else assistant.suggestions())

    def _get_grid(self, query: dict) -> None:
        """Up to 24 open photos the head puts in one class (``?label=`` to choose it)."""
        assistant = self.server.assistant
        if assistant is None:
            return self._error(HTTPStatus.NOT_FOUND, "assistance is off (tltool label serve --assist)")
        label = (query.get("label") or [None])[0]
        if label is not None and label not in self.server.store.classes:
            return self._error(HTTPStatus.BAD_REQUEST, f"unknown class {shortened(label)!r}")
        self._json(HTTPStatus.OK, assistant.grid(label))

    def _image(self, quoted: str) -> None:
        root = self.server.store.root
        rel = inside_root(root, unquote(quoted))
        if rel is None:
            return self._error(HTTPStatus.FORBIDDEN, "outside the dataset folder")
        if not is_image_name(Path(rel).name):
            return self._error(HTTPStatus.NOT_FOUND, "no such image")
        try:
            data = self.server.images.get(root, rel)
        except BadImageError as exc:
            return self._error(HTTPStatus.UNPROCESSABLE_ENTITY, f"{rel}: {exc.reason}")
        except OutsideRoot:
            return self._error(HTTPStatus.FORBIDDEN, "outside the dataset folder")
        except PermissionError:  # a photo the server may not read: it was "outside the dataset folder"
            return self._error(HTTPStatus.FORBIDDEN, f"cannot read {rel}: permission denied")
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "no such image")
        self._send(HTTPStatus.OK, data, "image/jpeg", cache=True)

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:  # noqa: N802
        refusal = self._refusal(write=True)
        if refusal:
            return self._refuse(refusal)
        action = POST_ROUTES.get(urlsplit(self.path).path)
        if action is None:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        body = self._read_json()
        if body is None:
            return None
        try:
            return action(self, body)
        except KeyError as exc:
            return self._error(HTTPStatus.NOT_FOUND, f"{exc.args[0]!r} is not one of the images being labelled"
                                                     f"{self._added_since(exc.args[0])}")
        except ValueError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except TltoolError as exc:  # the dataset's files (a lock or labels.csv made a link since): say so
            return self._error(HTTPStatus.CONFLICT, str(exc))

    def _added_since(self, path: object) -> str:
        """A hint when ``path`` is an image of the dataset that came after the labeler listed its images (a second
        `collect import`): it was a bare 404."""
        store = self.server.store
        inside = inside_root(store.root, path) if isinstance(path, str) else None
        if inside is None or not is_image_name(inside) or not (store.root / inside).is_file():
            return ""
        return " (added since this labeler started: stop it and run `tltool label serve` again to label it)"

    def _other_method(self) -> None:
        """PUT, DELETE, PATCH, ...: http.server answered with its HTML 501 page; this API speaks JSON."""
        refusal = self._refusal(write=True)
        if refusal:
            return self._refuse(refusal)
        return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not used here: GET reads, POST writes")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method  # noqa: N815 - http.server's names

    def _read_json(self) -> dict | None:
        """The request's JSON object, or None after answering with the reason it is refused."""
        # a JSON content type cannot be sent cross-site without a CORS preflight, which is never granted
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not self._one_length():
            length = -1  # a body whose length is not one Content-Length is never read (nor its end guessed)
        if not 0 < length <= MAX_BODY:
            self._error(HTTPStatus.BAD_REQUEST, "missing or oversized body (send one Content-Length, at most "
                                                f"{MAX_BODY} bytes)")
            return None
        try:
            self._body_used = True
            body = json.loads(self.rfile.read(length))
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            body = None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "expected a JSON object")
        return body if isinstance(body, dict) else None

    def _post_set(self, body: dict) -> None:
        """``{"path", "label" (or null), "skipped", "assisted"}``: one photo's whole state; or ``{"items": [...]}``
        of such states, written at once (undoing a confirmed grid is one write, all or nothing)."""
        states = body.get("items") if "items" in body else [body]
        if not isinstance(states, list) or not states or not all(_is_state(s) for s in states):
            return self._error(HTTPStatus.BAD_REQUEST, 'expected {"path": str, "label": str or null, "skipped": bool, '
                                                       '"assisted": bool}, or {"items": [such objects]}')
        for s in states:  # bool("no") is True: only JSON true/false (or the field left out, false) are accepted
            for name in ("skipped", "assisted"):
                if name in s and not isinstance(s[name], bool):
                    return self._error(HTTPStatus.BAD_REQUEST, f'"{name}" must be true or false (a JSON boolean), '
                                                               f"got {json.dumps(s[name])[:40]}")
        changes = [(s["path"], s.get("label"), s.get("skipped", False), s.get("assisted", False))
                   for s in states]
        summary = self.server.store.set_many(changes, [_expected(s) for s in states])
        if self.server.assistant is not None:
            self.server.assistant.observe([(path, label) for path, label, _, _ in changes])
        items = [{"path": path, "label": label, "skipped": skipped, "assisted": assisted and label is not None}
                 for path, label, skipped, assisted in changes]
        self._json(HTTPStatus.OK, {"item": items[0], "items": items, **summary})

    def _post_confirm(self, body: dict) -> None:
        """A confirmed grid ``{"label", "accepted": [paths], "rejected": [paths]}``: the accepted photos get the
        label (assisted) in one write; the rejected ones are never suggested that label again. A grid offers open
        photos (no label, not skipped): one another tab labelled or skipped since is refused (409), nothing saved;
        a confirm relabelled it, erasing that tab's label."""
        if self.server.assistant is None:  # with no suggestion shown, its labels were still recorded as accepted ones
            return self._error(HTTPStatus.NOT_FOUND, "assistance is off (tltool label serve --assist)")
        label, accepted, rejected = body.get("label"), body.get("accepted", []), body.get("rejected", [])
        if not (isinstance(label, str) and isinstance(accepted, list) and isinstance(rejected, list)
                and all(isinstance(p, str) for p in [*accepted, *rejected])):
            return self._error(HTTPStatus.BAD_REQUEST, 'expected {"label": str, "accepted": [str], "rejected": [str]}')
        if label not in self.server.store.classes:  # kept by the assistant as rejected, it broke every suggestion
            return self._error(HTTPStatus.BAD_REQUEST, f"unknown class {shortened(label)!r}; classes: "
                                                       f"{', '.join(self.server.store.classes)}")
        accepted = list(dict.fromkeys(accepted))  # a path sent twice is one photo, counted once
        summary = self.server.store.set_many([(p, label, False, True) for p in accepted],
                                             [(None, False)] * len(accepted)) if accepted else \
            self.server.store.summary()
        self.server.assistant.reject([p for p in rejected if self.server.store.listed(p)], label)
        self.server.assistant.observe([(p, label) for p in accepted])
        self._json(HTTPStatus.OK, {"accepted": len(accepted), "rejected": len(rejected), **summary})


def _is_state(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("path"), str) and _is_label(state.get("label")) and (
        state.get("expect") is None or (isinstance(state["expect"], dict) and _is_label(state["expect"].get("label"))
                                        and isinstance(state["expect"].get("skipped"), bool)))


def _is_label(value) -> bool:
    return value is None or isinstance(value, str)


def _expected(state: dict) -> tuple[str | None, bool] | None:
    """The ``(label, skipped)`` the page believes the photo has (its ``expect``), or None when it sent none."""
    expect = state.get("expect")
    return None if expect is None else (expect.get("label"), expect["skipped"])


GET_ROUTES: dict[str, Callable[[LabelerHandler, dict], None]] = {
    "/api/state": LabelerHandler._get_state,
    "/api/assist": LabelerHandler._get_assist,
    "/api/grid": LabelerHandler._get_grid,
}
POST_ROUTES: dict[str, Callable[[LabelerHandler, dict], None]] = {
    "/api/set": LabelerHandler._post_set,
    "/api/confirm": LabelerHandler._post_confirm,
}
