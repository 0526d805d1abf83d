"""Tokens: verify a JWT with pyjwt and read the identity the policies need.

Two kinds of keys, never mixed up:

- a shared secret, for HS256 tokens (the portal's own, or Supabase's);
- a JWKS (a file, or a URL that the shell fetches), for RS256 and ES256 tokens
  of a team's own identity provider. A key from the JWKS verifies only tokens
  of its own algorithm.

A token's ``alg`` must be in the allow-list (``none`` never is, nor is an HMAC
algorithm without a secret), ``exp`` is required, ``nbf`` and ``iat`` are
honoured with a small leeway, and ``aud`` and ``iss`` are checked when set.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from relay.core.errors import AuthError, ConfigError, ErrorCode
from relay.core.policy import ClaimSpec
from relay.core.types import Claims, UserId

HMAC_ALGORITHMS = frozenset(("HS256", "HS384", "HS512"))
ASYMMETRIC_ALGORITHMS = frozenset(("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for."""

    subject: UserId  # the token's ``sub``: one user, across refreshes
    role: str
    bypass: bool  # the role sees every row (service_role)
    claims: Claims  # the policy file's claims, by name
    expires_at: float  # unix time
    issued_at: float | None = None  # the token's iat, if it has one
    # What authorization depends on: equal grants, equal decisions. Computed
    # once, since the fan-out compares them for every recipient of every change.
    grants: tuple[Any, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grants", (self.bypass, tuple(sorted(self.claims.items()))))


class TokenVerifier:
    """Checks tokens against the configured keys; ``verify`` is pure computation."""

    def __init__(
        self,
        *,
        claims: Mapping[str, ClaimSpec],
        bypass_roles: frozenset[str],
        policy_roles: frozenset[str] = frozenset({"authenticated"}),
        secret: str | None = None,
        jwks: jwt.PyJWKSet | None = None,
        algorithms: Sequence[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        if secret is None and jwks is None:
            raise ConfigError(
                "no key to verify tokens: set a JWT secret, a JWKS file or a JWKS URL"
            )
        if secret is not None and len(secret.encode()) < 32:
            raise ConfigError("the JWT secret must be at least 32 bytes (RFC 7518, 3.2)")
        if algorithms is None:
            allowed = set()
            if secret is not None:
                allowed.add("HS256")
            if jwks is not None:
                allowed |= {"RS256", "ES256"}
        else:
            allowed = set(algorithms)
        unknown = allowed - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS
        if unknown:
            raise ConfigError(f"unsupported JWT algorithms {sorted(unknown)}")
        if allowed & HMAC_ALGORITHMS and secret is None:
            raise ConfigError("an HMAC algorithm is allowed but no JWT secret is set")
        self.algorithms = frozenset(allowed)
        self.claims = claims
        self.bypass_roles = bypass_roles
        self.policy_roles = policy_roles
        # Called when a token names a key the JWKS lacks: the shell may fetch it again.
        self.on_unknown_key: Callable[[], None] | None = None
        self.secret = secret
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; ``AuthError`` with a plain reason otherwise."""
        return self._identity(self._decode(token, ["exp", "sub"], self.audience))

    def verify_key(self, token: str) -> Mapping[str, Any]:
        """The claims of a valid project key (Supabase's ``apikey``: the anon or
        service key, a JWT signed like the users' tokens, with a role and an
        expiry but no user and, usually, no audience); ``AuthError`` otherwise.
        It opens a socket, never a row: each channel still needs a user's token."""
        payload = self._decode(token, ["exp"], None)
        if not isinstance(payload.get("role"), str):
            raise AuthError(ErrorCode.INVALID_TOKEN, "the key has no 'role' claim", "role")
        return payload

    def _decode(self, token: str, required: list[str], audience: str | None) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise AuthError(ErrorCode.INVALID_TOKEN, "the token is missing", "malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "the token is not a JWT", "malformed"
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError(
                ErrorCode.INVALID_TOKEN,
                f"the token's algorithm {alg!r} is not allowed",
                "algorithm",
            )
        # The key follows from the algorithm's family: a JWKS key never
        # verifies an HMAC token, and the secret never an RSA or EC one.
        key: Any = self.secret if alg in HMAC_ALGORITHMS else self._jwk(header.get("kid"), alg)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": required,
                    "verify_aud": audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(ErrorCode.TOKEN_EXPIRED, "the token has expired", "expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "the token is not valid yet", "not_yet_valid"
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "the token is for another audience", "audience"
            ) from None
        except jwt.InvalidIssuerError:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "the token is from another issuer", "issuer"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, f"the token has no {exc.claim!r} claim", "claims"
            ) from None
        except jwt.InvalidSignatureError:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "the token's signature is invalid", "signature"
            ) from None
        except jwt.PyJWTError:
            raise AuthError(ErrorCode.INVALID_TOKEN, "the token is invalid", "invalid") from None
        return payload

    def _jwk(self, kid: Any, alg: str) -> jwt.PyJWK:
        if self.jwks is None:
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "no key for the token's algorithm", "unknown_key"
            )
        candidates = [k for k in self.jwks.keys if k.algorithm_name == alg]
        if kid is not None:
            candidates = [k for k in candidates if k.key_id == kid]
        if len(candidates) != 1:
            if self.on_unknown_key is not None:
                self.on_unknown_key()
            raise AuthError(
                ErrorCode.INVALID_TOKEN, "no key matches the token's key id", "unknown_key"
            )
        return candidates[0]

    def _identity(self, payload: Mapping[str, Any]) -> Identity:
        return identity_of(payload, self.claims, self.bypass_roles, self.policy_roles)


def identity_of(
    payload: Mapping[str, Any],
    claims: Mapping[str, ClaimSpec],
    bypass_roles: frozenset[str],
    policy_roles: frozenset[str],
) -> Identity:
    """Who a verified token's ``payload`` speaks for, under the policy file's
    claims and roles; ``AuthError`` if its role may not use the relay, or a
    claim that the policies read is missing or not of the expected form."""
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError(
            ErrorCode.INVALID_TOKEN, "the token's 'sub' claim is not a string", "claims"
        )
    role = payload.get("role")
    if not isinstance(role, str):
        raise AuthError(ErrorCode.INVALID_TOKEN, "the token has no 'role' claim", "role")
    bypass = role in bypass_roles
    if not bypass and role not in policy_roles:
        raise AuthError(ErrorCode.INVALID_TOKEN, f"the role {role!r} may not use the relay", "role")
    values: dict[str, str | None] = {}
    for spec in claims.values():
        value: Any = payload
        for part in spec.path:
            value = value.get(part) if isinstance(value, Mapping) else None
        valid = isinstance(value, str) and (spec.pattern is None or spec.pattern.fullmatch(value))
        if bypass:
            # A role that sees every row needs no claim; one it has is kept if valid.
            values[spec.name] = value if valid else None
            continue
        if not isinstance(value, str):
            raise AuthError(
                ErrorCode.INVALID_TOKEN,
                f"the token has no string claim {'.'.join(spec.path)}",
                "claims",
            )
        if not valid:
            raise AuthError(
                ErrorCode.INVALID_TOKEN,
                f"the token's claim {'.'.join(spec.path)} is not of the expected form",
                "claims",
            )
        values[spec.name] = value
    return Identity(
        subject=UserId(subject),
        role=role,
        bypass=bypass,
        claims=values,
        expires_at=float(payload["exp"]),
        issued_at=float(iat) if isinstance(iat := payload.get("iat"), int | float) else None,
    )
