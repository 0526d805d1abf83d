"""The browser's link to the relay: where it is, and a short-lived token for it.

realtime-client.js asks for this when it starts and again before the token
expires, and after the relay closed its connection because the user's
tokens were revoked (4010); a 401 tells it that the user signed out (or was
moved or deactivated), and it stops.
"""

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from portal import relay_token
from portal.access import json_401, signed_in
from portal.auth import SignedIn
from portal.views.rendering import Views


class RealtimeViews(Views):
    @property
    def _supabase(self) -> dict[str, str]:
        url, realtime_url = relay_token.supabase_urls(self.settings.relay_url)
        return {
            "url": url,
            "realtime_url": realtime_url,
            "anon_key": relay_token.anon_key(self.settings.relay_jwt_secret),
        }

    # The session is held while it is checked, and the token is issued at the
    # check's start (its iat): a move, deactivation or sign-out committing
    # meanwhile either is seen (401) or revokes this token (auth.live_user).
    @signed_in(otherwise=json_401, hold_session=True)
    async def config(self, request: Request, user: SignedIn) -> Response:
        """The relay's URL, a token for it and when that expires (unix time), never cached."""
        token, expires_at = relay_token.issue(
            user.user_id,
            user.tenant_id,
            secret=self.settings.relay_jwt_secret,
            audience=self.settings.relay_audience,
            lifetime=self.settings.relay_token_ttl,
            issued_at=user.checked_at,
        )
        return JSONResponse(
            {
                "url": self.settings.relay_url,
                "token": token,
                "expires_at": expires_at,
                "user_id": user.user_id,
                "tenant_id": user.tenant_id,
                # For supabase-js: createClient(supabase.url, supabase.anon_key),
                # then setAuth(token) (docs/supabase.md).
                "supabase": self._supabase,
            },
            headers={"Cache-Control": "no-store"},
        )
