"""Signing in and out: the login page and form, and the logout."""

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from portal import auth
from portal.access import signed_in
from portal.auth import SignedIn
from portal.database import Database
from portal.security import check_csrf
from portal.settings import PortalSettings
from portal.views.rendering import Views


def safe_next(value: str | None) -> str | None:
    """A local path to go to after signing in; anything else is dropped (no open redirect)."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/nexus") or value.startswith("//"):
        return None
    return value


class SignInViews(Views):
    def __init__(self, settings: PortalSettings, db: Database, templates: Jinja2Templates) -> None:
        super().__init__(settings, db, templates)
        self.throttle = auth.LoginThrottle(settings.login_free_failures, settings.login_window)

    async def login_page(self, request: Request) -> Response:
        """The form; a user who is signed in already goes to the dashboard."""
        if await auth.live_user(request, self.db):
            return RedirectResponse(request.url_for("dashboard").path, 303)
        return self.render(request, "login.html", next=safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        """A new session, then ``next`` or the dashboard; 401 if wrong, 429 if too many."""
        form = await request.form()
        check_csrf(request, form)
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))[:1024]
        next_path = safe_next(str(form.get("next", "")))
        address = request.client.host if request.client else "unknown"
        account_key, address_key = f"account:{email}", f"address:{address}"
        keys = [account_key, address_key]

        wait = self.throttle.retry_after(keys)
        if wait > 0:
            seconds = int(wait) + 1
            return self.render(
                request,
                "login.html",
                429,
                {"Retry-After": str(seconds)},
                email=email,
                next=next_path,
                error=f"Too many failed sign-ins. Try again in {seconds} seconds.",
            )
        attempted_at = self.throttle.attempt(keys)  # counted before checking: no racing it
        user = None
        if email and password:
            user = await auth.sign_in(self.db, email, password, self.settings.session_max_age)
        if user is None:
            return self.render(
                request,
                "login.html",
                401,
                email=email,
                next=next_path,
                error="Wrong email or password.",
            )
        self.throttle.succeeded(account_key, address_key, attempted_at)
        auth.start_session(request, user)
        return RedirectResponse(next_path or request.url_for("dashboard").path, 303)

    @signed_in()
    async def logout(self, request: Request, user: SignedIn) -> Response:
        """End the session, in the database and the cookie; then to the login."""
        check_csrf(request, await request.form())
        await auth.end_session(self.db, user)  # a copy of the cookie is worth nothing now
        request.session.clear()
        return RedirectResponse(request.url_for("login_page").path, 303)
