"""Security headers and CSRF protection.

CSRF: a synchronizer token, made at sign-in and kept in the signed session
cookie. Every POST must carry it, in the form field ``csrf_token`` or the
``X-CSRF-Token`` header (htmx requests: added by app.js). The session cookie is
also SameSite=Lax, so a cross-site POST does not even carry it.
"""

import secrets
from urllib.parse import urlsplit

from starlette.datastructures import FormData, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made now if the session has none."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, form: FormData) -> None:
    """Refuse (403) a POST without the session's CSRF token."""
    expected = request.session.get("csrf")
    given = request.headers.get("x-csrf-token") or form.get("csrf_token")
    if (
        not isinstance(expected, str)
        or not isinstance(given, str)
        or not secrets.compare_digest(expected, given)
    ):
        raise HTTPException(403, "This form has expired. Reload the page and try again.")


def content_security_policy(relay_url: str) -> str:
    """No inline script or style, nothing from elsewhere; WebSocket to the relay only."""
    parts = urlsplit(relay_url)
    relay_origin = f"{parts.scheme}://{parts.netloc}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src 'self' {relay_origin}",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp, relay_url: str, https: bool = True) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": content_security_policy(relay_url),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        }
        if https:
            self.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int = 64 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = MutableHeaders(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, "This request is too large.")
            return message

        await self.app(scope, limited, send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = b"This request is too large."
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
