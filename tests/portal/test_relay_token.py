"""The relay token's shape: what the portal issues, and what the tests' ``mint`` forges from it."""

import jwt

from portal import relay_token
from tests.support import JWT_SECRET, mint


def test_the_portal_issues_its_claims_signed_with_the_shared_secret() -> None:
    token, expires_at = relay_token.issue(
        "USR-ALIC0001", "TNT-ALPHA001", secret=JWT_SECRET, audience="nexus-relay", lifetime=300
    )
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="nexus-relay")
    assert claims == {
        "sub": "USR-ALIC0001",
        "role": "authenticated",
        "aud": "nexus-relay",
        "iss": "nexus-portal",
        "iat": claims["iat"],
        "exp": expires_at,
        "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
    }
    assert expires_at - int(claims["iat"]) == 300
    assert isinstance(claims["iat"], float)  # to the microsecond: see relay.revoke


def test_claims_at_a_given_time_and_without_an_issuer() -> None:
    claims = relay_token.claims("USR-A", None, issuer=None, lifetime=59.5, now=1000.7)
    assert (claims["iat"], claims["exp"]) == (1000.7, 1060)
    assert "iss" not in claims
    assert claims["app_metadata"] == {"user_id": "USR-A", "tenant_id": None}


def test_mint_is_the_portals_shape_without_iss_and_forges_on_request() -> None:
    claims = jwt.decode(
        mint("USR-A", "TNT-A"), JWT_SECRET, algorithms=["HS256"], audience="nexus-relay"
    )
    assert set(claims) == {"sub", "role", "aud", "iat", "exp", "app_metadata"}
    assert claims["exp"] - claims["iat"] == 600
    anonymous = jwt.decode(
        mint(None, "TNT-A", aud="other", iss="someone"),
        JWT_SECRET,
        algorithms=["HS256"],
        options={"verify_aud": False},
    )
    assert (anonymous["sub"], anonymous["aud"], anonymous["iss"]) == (
        "anonymous",
        "other",
        "someone",
    )
    assert anonymous["app_metadata"]["user_id"] is None


def test_the_portal_issues_at_the_time_it_is_given() -> None:
    token, expires_at = relay_token.issue(
        "USR-A", "TNT-A", secret=JWT_SECRET, lifetime=300, issued_at=1_800_000_000.123456
    )
    claims = jwt.decode(
        token,
        JWT_SECRET,
        algorithms=["HS256"],
        audience="nexus-relay",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert (claims["iat"], claims["exp"], expires_at) == (
        1_800_000_000.123456,
        1_800_000_300,
        1_800_000_300,
    )
