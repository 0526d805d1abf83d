"""What is outside the Nexus pages: the root, the health check, the scripts of
npm packages served locally (htmx, the relay's JavaScript client)."""

from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from portal.views.rendering import Views


class SiteViews(Views):
    async def root(self, request: Request) -> Response:
        return RedirectResponse(request.url_for("dashboard").path, 303)

    async def healthz(self, request: Request) -> Response:
        """200 when the database answers, else 503; for load balancers, not signed in."""
        try:
            await self.db.ping()
        except (DBAPIError, OSError):
            return JSONResponse({"ok": False, "database": "unreachable"}, 503)
        return JSONResponse({"ok": True})

    async def htmx(self, request: Request) -> Response:
        """htmx from the npm package (``npm ci``): never from a CDN, under the strict CSP."""
        return FileResponse(
            self.settings.htmx_path,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def relay_client(self, request: Request) -> Response:
        """@nexus-relay/client (clients/js, linked by ``npm ci``): an ES module served
        as it is, which realtime-client.js imports."""
        return FileResponse(
            self.settings.relay_client_path,
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache"},
        )
