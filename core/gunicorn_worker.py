"""gunicorn's threaded worker, with gunicorn's own refusals in the API's JSON error shape.

gunicorn answers a request it cannot parse (a request line over ``limit_request_line``, a header
field over ``limit_request_field_size``, too many fields, a malformed line) itself, before Django
runs, with an HTML page. Clients of the API get ``{"error": {...}}`` for those too.
"""

from __future__ import annotations

import json

from django.conf import settings
from gunicorn import glogging, util
from gunicorn.workers.gthread import ThreadWorker

# (status, reason) by what gunicorn reported; everything else keeps gunicorn's status.
_LINE_TOO_LONG = "Request Line is too large"
_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    414: "request_too_large",
    431: "request_too_large",
    500: "api_error",
    501: "invalid_request_error",
}
_MESSAGES = {
    400: "Malformed HTTP request.",
    403: "Request forbidden.",
    414: "The request line (method and URL) is too long.",
    431: "The request headers are too large or too many.",
    500: "Internal error.",
    501: "Unsupported transfer coding.",
}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:  # noqa: ANN001
    if status_int == 400 and _LINE_TOO_LONG in mesg:
        status_int, reason = 414, "URI Too Long"
    # gunicorn's own message can quote what the client sent (a header name, a request line): it is
    # logged by gunicorn, not echoed back.
    body = json.dumps(
        {
            "error": {
                "type": _TYPES.get(status_int, "invalid_request_error"),
                "message": _MESSAGES.get(status_int, reason),
                "details": {},
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + body)


class JsonErrorThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        # The base worker's handle_error calls gunicorn.util.write_error by module attribute.
        util.write_error = write_json_error
        super().init_process()

    def handle_request(self, req, conn) -> bool:  # noqa: ANN001
        keepalive = super().handle_request(req, conn)
        if not keepalive:
            # The connection closes next. A body the application did not read (a 413 answered from
            # Content-Length) is read first, within bounds, so the close is not a reset that loses
            # the answer (core.limits.discard_body). Kept-alive connections need nothing: gunicorn
            # skips an unread body before it parses the next request.
            unread_body_discard(req, conn.sock)
        return keepalive


def unread_body_discard(req, sock) -> None:  # noqa: ANN001
    # Imported here: gunicorn's master imports this module before Django's settings are configured.
    from core.limits import discard_body

    max_bytes = getattr(settings, "REQUEST_DISCARD_MAX_BYTES", 16 * 1024 * 1024)
    length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        return  # more than would be read: closing now loses nothing more than draining part of it
    try:
        timeout = sock.gettimeout()
    except OSError:
        return
    discard_body(
        req.body.read,
        max_bytes=max_bytes,
        seconds=getattr(settings, "REQUEST_DISCARD_SECONDS", 10.0),
        set_timeout=sock.settimeout,
    )
    try:
        sock.settimeout(timeout)
    except OSError:
        pass


class GatewayLogger(glogging.Logger):
    """gunicorn's logger, minus the access line's formatting when nothing would print it.

    With a ``logconfig_dict`` gunicorn builds every request's access-log fields whether or not the
    access log is on; the application writes its own access line (core.logs.RequestContextMiddleware).
    """

    def access(self, resp, req, environ, request_time) -> None:  # noqa: ANN001
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)
