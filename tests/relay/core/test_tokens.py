"""Token verification, without a socket."""

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.errors import AuthError, ConfigError, ErrorCode
from relay.core.policy import ClaimSpec
from relay.core.tokens import TokenVerifier
from tests.support import JWT_SECRET, mint

CLAIMS = {
    "user_id": ClaimSpec("user_id", ("app_metadata", "user_id"), None),
    "tenant_id": ClaimSpec("tenant_id", ("app_metadata", "tenant_id"), None),
}


def verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier(
        claims=CLAIMS, bypass_roles=frozenset({"service_role"}), **{"secret": JWT_SECRET, **options}
    )


def test_a_valid_token_gives_the_identity() -> None:
    identity = verifier().verify(mint("USR-A", "TNT-A", expires_in=60))
    assert identity.subject == "USR-A"
    assert identity.role == "authenticated"
    assert identity.bypass is False
    assert identity.claims == {"user_id": "USR-A", "tenant_id": "TNT-A"}
    assert identity.expires_at == pytest.approx(time.time() + 60, abs=2)


def test_leeway_is_small_and_honoured() -> None:
    assert verifier(leeway=30).verify(mint("USR-A", "TNT-A", expires_in=-10)).subject == "USR-A"
    with pytest.raises(AuthError) as excinfo:
        verifier(leeway=30).verify(mint("USR-A", "TNT-A", expires_in=-60))
    assert excinfo.value.code == ErrorCode.TOKEN_EXPIRED
    with pytest.raises(AuthError, match="not valid yet"):
        verifier(leeway=30).verify(mint("USR-A", "TNT-A", nbf=int(time.time()) + 120))
    with pytest.raises(AuthError, match="not valid yet"):
        verifier(leeway=30).verify(mint("USR-A", "TNT-A", iat=int(time.time()) + 120))


def test_a_bypass_role_needs_no_claims() -> None:
    identity = verifier().verify(mint("batch-job", None, role="service_role"))
    assert identity.bypass is True
    assert identity.claims == {"user_id": "batch-job", "tenant_id": None}


def test_a_claim_of_the_wrong_type_is_refused() -> None:
    token = jwt.encode(
        {
            "sub": "u",
            "role": "authenticated",
            "exp": int(time.time()) + 60,
            "app_metadata": {"user_id": 5, "tenant_id": "T"},
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    with pytest.raises(AuthError, match=r"no string claim app_metadata\.user_id"):
        verifier().verify(token)


def test_the_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="no key"):
        TokenVerifier(claims=CLAIMS, bypass_roles=frozenset())
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        verifier(secret="short")
    with pytest.raises(ConfigError, match="unsupported JWT algorithms"):
        verifier(algorithms=["none"])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = jwt.PyJWKSet(
        [{**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k"}]
    )
    with pytest.raises(ConfigError, match="no JWT secret"):
        TokenVerifier(claims=CLAIMS, bypass_roles=frozenset(), jwks=jwks, algorithms=["HS256"])
    only_jwks = TokenVerifier(claims=CLAIMS, bypass_roles=frozenset(), jwks=jwks)
    assert only_jwks.algorithms == {"RS256", "ES256"}
    with pytest.raises(AuthError, match="algorithm 'HS256' is not allowed"):
        only_jwks.verify(mint("USR-A", "TNT-A"))


def test_an_algorithm_that_is_not_a_string_is_refused() -> None:
    header = jwt.utils.base64url_encode(b'{"alg":["HS256"],"typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(b'{"sub":"USR-A","exp":9999999999}').decode()
    with pytest.raises(AuthError, match="is not allowed"):
        verifier().verify(f"{header}.{body}.c2ln")


@pytest.mark.parametrize(
    ("role", "message"),
    [("anon", "the role 'anon' may not use the relay"), (None, "the token has no 'role' claim")],
)
def test_only_the_policy_and_bypass_roles_are_accepted(role: str | None, message: str) -> None:
    payload = {
        "sub": "USR-A",
        "exp": int(time.time()) + 60,
        "app_metadata": {"user_id": "USR-A", "tenant_id": "TNT-A"},
    }
    if role is not None:
        payload["role"] = role
    with pytest.raises(AuthError, match=message):
        verifier().verify(jwt.encode(payload, JWT_SECRET, algorithm="HS256"))


def test_an_unknown_key_id_asks_for_the_jwks_again() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = jwt.PyJWKSet(
        [
            {
                **jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
                "kid": "k1",
                "alg": "RS256",
            }
        ]
    )
    checked = TokenVerifier(claims=CLAIMS, bypass_roles=frozenset(), jwks=jwks)
    asked = []
    checked.on_unknown_key = lambda: asked.append(True)
    token = jwt.encode(
        {
            "sub": "u",
            "role": "authenticated",
            "exp": int(time.time()) + 60,
            "app_metadata": {"user_id": "U", "tenant_id": "T"},
        },
        key,
        algorithm="RS256",
        headers={"kid": "k2"},
    )
    with pytest.raises(AuthError, match="no key matches"):
        checked.verify(token)
    assert asked == [True]
