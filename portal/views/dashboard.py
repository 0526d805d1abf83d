"""The dashboard: counts of what needs attention, and the latest cases."""

from starlette.requests import Request
from starlette.responses import Response

from portal.access import signed_in
from portal.auth import SignedIn
from portal.views import queries
from portal.views.rendering import Views


class DashboardViews(Views):
    @signed_in()
    async def page(self, request: Request, user: SignedIn) -> Response:
        async with self.db.as_user(user.claims) as conn:
            viewer = await self.viewer(request, conn, user)
            counts = await queries.dashboard_counts(conn)
            recent = await queries.case_rows(conn, limit=5)
        return self.render(request, "dashboard.html", viewer=viewer, counts=counts, cases=recent)

    @signed_in()
    async def counts(self, request: Request, user: SignedIn) -> Response:
        """The counts' live region."""
        async with self.db.as_user(user.claims) as conn:
            counts = await queries.dashboard_counts(conn)
        return self.render(request, "partials/dashboard_counts.html", counts=counts)
