"""Who may join which topic: the [topics] rules of a policy file, and the decision."""

import json
from pathlib import Path
from typing import Any

import pytest

from relay.core import policy, topic_rules
from relay.core.errors import ConfigError, ErrorCode
from relay.core.tokens import Identity, identity_of
from relay.core.topic_rules import Actions, Admitted, Refused, TopicRules
from tests.support import ALICE, BOB, GRACE, POLICY_FILE

HEAD = """
version = 1
[claims.user_id]
path = "app_metadata.user_id"
[claims.tenant_id]
path = "app_metadata.tenant_id"
"""

RULES = (
    HEAD
    + """
[[topics.rules]]
pattern = "tenant:{tenant_id}"
broadcast = ["read", "write"]
presence = ["read", "write"]
when = "tenant_id = claims.tenant_id"

[[topics.rules]]
pattern = "tenant:{tenant_id}:user:{user_id}"
broadcast = ["read"]
when = "tenant_id = claims.tenant_id and user_id = claims.user_id"

[[topics.rules]]
pattern = "room:lobby"
presence = ["read"]

[[topics.rules]]
pattern = "case:{case_id}"
broadcast = ["read", "write"]
presence = ["read", "write"]
check = "SELECT 1 FROM nexus_cases WHERE id = :case_id"

[[topics.rules]]
pattern = "vault:{name}"
broadcast = ["read"]
private_only = true
"""
)


def rules_of(text: str) -> TopicRules:
    return policy.from_dict(_toml(text)).topics


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def who(user: tuple[str, str], role: str = "authenticated") -> Identity:
    user_id, tenant_id = user
    return identity_of(
        {
            "sub": user_id,
            "role": role,
            "exp": 2_000_000_000,
            "iat": 1_700_000_000.5,
            "app_metadata": {"user_id": user_id, "tenant_id": tenant_id},
        },
        policy.from_dict(_toml(HEAD)).claims,
        frozenset({"service_role"}),
        frozenset({"authenticated"}),
    )


SERVICE = identity_of(
    {"sub": "service", "role": "service_role", "exp": 2_000_000_000},
    policy.from_dict(_toml(HEAD)).claims,
    frozenset({"service_role"}),
    frozenset({"authenticated"}),
)


def decide(topic: str, identity: Identity, private: bool = True) -> Admitted | Refused:
    return topic_rules.decide(rules_of(RULES), topic, identity, private=private)


# --- Patterns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "params"),
    [
        ("case:{case_id}", "case:CASE-AB000001", {"case_id": "CASE-AB000001"}),
        ("case:{case_id}", "case:", None),  # a placeholder captures something
        ("case:{case_id}", "case:a:b", None),  # ... and one segment only
        ("case:{case_id}", "cases:x", None),
        ("case:{case_id}", "case", None),
        ("room:lobby", "room:lobby", {}),
        ("room:lobby", "room:lobby2", None),
        ("room:lobby", "Room:lobby", None),  # literals are exact
        ("t:{a}:u:{b}", "t:1:u:2", {"a": "1", "b": "2"}),
        ("t:{a}:u:{b}", "t:1:v:2", None),
        ("{any}", "anything-without-colons", {"any": "anything-without-colons"}),
        ("{any}", "a:b", None),
        ("a::b", "a::b", {}),
    ],
)
def test_a_pattern_matches_whole_segments(
    pattern: str, topic: str, params: dict[str, str] | None
) -> None:
    assert topic_rules.parse_pattern(pattern).match(topic) == params


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "is empty"),
        ("case:{case id}", "no spaces"),
        ("case:x{case_id}", "a placeholder is a whole segment"),
        ("case:{case_id", "a placeholder is a whole segment"),
        ("case:{Case}", "a-z, 0-9 and _"),
        ("case:{}", "a-z, 0-9 and _"),
        ("t:{a}:u:{a}", "appears twice"),
    ],
)
def test_a_bad_pattern_is_refused(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        topic_rules.parse_pattern(pattern)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("case:{id}", "case:{case_id}", True),
        ("case:{id}", "case:special", True),
        ("case:{id}", "room:{id}", False),
        ("case:{id}", "case:{id}:x", False),
        ("{kind}:lobby", "room:{name}", True),
        ("case:{id}", "case:", False),  # a placeholder never matches an empty segment
    ],
)
def test_overlapping_patterns_are_found(a: str, b: str, overlap: bool) -> None:
    pa, pb = topic_rules.parse_pattern(a), topic_rules.parse_pattern(b)
    assert pa.overlaps(pb) is overlap
    assert pb.overlaps(pa) is overlap


# --- The file ------------------------------------------------------------------


def rule(body: str) -> str:
    return HEAD + "\n[[topics.rules]]\n" + body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + "[topics]\nrule = []", r"\[topics\]: unknown keys \['rule'\]"),
        (HEAD + "[topics]\nrules = 1", "must be an array of tables"),
        (rule('pattern = "a"\nbroadcast = ["read"]\nwho = 1'), r"unknown keys \['who'\]"),
        (rule('broadcast = ["read"]'), "needs pattern"),
        (rule('pattern = "a:{x"\nbroadcast = ["read"]'), "#1 \\('a:\\{x'\\): .*whole segment"),
        (rule('pattern = "a"\nbroadcast = ["receive"]'), 'a list of "read" and "write"'),
        (rule('pattern = "a"\nbroadcast = "read"'), 'a list of "read" and "write"'),
        (rule('pattern = "a"\nbroadcast = ["write"]'), 'grants no "read"'),
        (rule('pattern = "a"'), 'grants no "read"'),
        (rule('pattern = "a"\npresence = ["read"]\nprivate_only = 1'), "true or false"),
        # when: the policy language, over placeholders and declared claims
        (rule('pattern = "a:{x}"\npresence = ["read"]\nwhen = "x ="'), "when: expected"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\nwhen = "y = claims.user_id"'), "'y' is not"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\nwhen = "x = claims.nope"'), "not declared"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\nwhen = "parents.c.x = x"'), "no parents"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\nwhen = 1'), "when must be a string"),
        # check: one query, parameters that the pattern captures, bound
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT :y"'), ":y is not a"),
        (rule('pattern = "a"\npresence = ["read"]\ncheck = "SELECT :x"'), "captures nothing"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "DELETE FROM t"'), "SELECT"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT 1; DROP TABLE t"'), "';'"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT $1"'), "not \\$1"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT \'x"'), "unterminated"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = 1'), "check must be a string"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT $q$ x"'), "dollar-quoted"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT \\"x"'), "identifier"),
        (rule('pattern = "a:{x}"\npresence = ["read"]\ncheck = "SELECT /* /* */"'), "comment"),
        (HEAD + "[topics]\nrules = [1]", "#1 must be a table"),
        # one rule per topic
        (
            rule('pattern = "case:{id}"\npresence = ["read"]')
            + '\n[[topics.rules]]\npattern = "case:vip"\npresence = ["read"]',
            r"#2 \('case:vip'\): its pattern and 'case:\{id\}' match the same topics "
            r"\(e.g. 'case:vip'\)",
        ),
    ],
)
def test_a_bad_topics_section_says_which_rule_and_why(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as excinfo:
        policy.load(path)
    assert str(path) in str(excinfo.value)


def test_describe_says_what_a_rule_grants_and_when() -> None:
    lines = [topic_rules.describe(r) for r in rules_of(RULES).rules]
    assert lines == [
        "topic tenant:{tenant_id}: broadcast read, write; presence read, write;"
        " when tenant_id = claims.tenant_id",
        "topic tenant:{tenant_id}:user:{user_id}: broadcast read;"
        " when tenant_id = claims.tenant_id and user_id = claims.user_id",
        "topic room:lobby: presence read",
        "topic case:{case_id}: broadcast read, write; presence read, write;"
        " check SELECT 1 FROM nexus_cases WHERE id = :case_id",
        "topic vault:{name}: broadcast read; private joins only",
    ]


def test_a_file_without_topics_has_no_rules() -> None:
    assert policy.from_dict(_toml(HEAD)).topics.rules == ()


def test_the_portal_file_has_the_case_rule() -> None:
    topics = policy.load(Path(POLICY_FILE)).topics
    [case] = topics.rules
    assert case.pattern.source == "case:{case_id}"
    assert case.actions == Actions(True, True, True, True)
    assert case.check is not None
    assert case.check.params == ("case_id",)


@pytest.mark.parametrize(
    ("check", "text", "params"),
    [
        (
            "SELECT 1 FROM nexus_cases WHERE id = :case_id",
            "SELECT 1 FROM nexus_cases WHERE id = %(case_id)s",
            ("case_id",),
        ),
        ("SELECT :n::int + :n", "SELECT %(n)s::int + %(n)s", ("n",)),  # :: is a cast
        ("SELECT 'a:b', \"c:d\" WHERE x LIKE '%'", "SELECT 'a:b', \"c:d\" WHERE x LIKE '%%'", ()),
        ("SELECT E'\\':x' -- :y\n, :z", "SELECT E'\\':x' -- :y\n, %(z)s", ("z",)),
        ("SELECT $q$ :x; $q$ /* :y /* ; */ */", "SELECT $q$ :x; $q$ /* :y /* ; */ */", ()),
        ("  with c as (select 1) select * from c", "  with c as (select 1) select * from c", ()),
        ("SELECT a[1:2], f(b := 1)", "SELECT a[1:2], f(b := 1)", ()),
        ("SELECT a$b, :x", "SELECT a$b, %(x)s", ("x",)),  # $ inside an identifier
    ],
)
def test_a_check_binds_its_parameters(check: str, text: str, params: tuple[str, ...]) -> None:
    query = topic_rules.parse_check(check)
    assert (query.text, query.params) == (text, params)


# --- Deciding ------------------------------------------------------------------


def test_a_topic_without_a_rule_is_refused_to_everyone() -> None:
    for identity in (who(ALICE), SERVICE):
        for private in (True, False):
            decision = decide("chat:general", identity, private)
            assert isinstance(decision, Refused)
            assert decision.code == ErrorCode.TOPIC_NOT_ALLOWED
            assert decision.reason == "no_rule"
            assert decision.message == "you may not join the topic 'chat:general'"


def test_a_private_join_without_a_rule_is_refused_not_treated_as_public() -> None:
    rules = rules_of(HEAD)
    decision = topic_rules.decide(rules, "anything", who(ALICE), private=True)
    assert isinstance(decision, Refused)
    assert decision.code == ErrorCode.TOPIC_NOT_ALLOWED


def test_a_claims_rule_admits_its_tenant_only() -> None:
    decision = decide("tenant:TNT-ALPHA001", who(ALICE))
    assert isinstance(decision, Admitted)
    assert decision.params == {"tenant_id": "TNT-ALPHA001"}
    assert decision.actions == Actions(True, True, True, True)
    assert decision.check is None
    refusal = decide("tenant:TNT-ALPHA001", who(BOB))
    assert isinstance(refusal, Refused)
    assert (refusal.code, refusal.reason) == (ErrorCode.TOPIC_NOT_ALLOWED, "when")
    # The client learns nothing of why: the same message as a topic without a rule.
    assert refusal.message == "you may not join the topic 'tenant:TNT-ALPHA001'"


def test_a_rule_grants_its_actions_only() -> None:
    decision = decide("tenant:TNT-ALPHA001:user:USR-ALIC0001", who(ALICE))
    assert isinstance(decision, Admitted)
    assert decision.actions == Actions(broadcast_read=True)
    assert isinstance(decide("tenant:TNT-ALPHA001:user:USR-CARO0001", who(ALICE)), Refused)
    lobby = decide("room:lobby", who(GRACE), private=False)
    assert isinstance(lobby, Admitted)
    assert lobby.actions == Actions(presence_read=True)


def test_when_is_true_or_refused_as_in_sql() -> None:
    # A claim the token lacks is NULL: the comparison is unknown, and unknown refuses.
    rules = rules_of(
        HEAD + '[[topics.rules]]\npattern = "t:{x}"\npresence = ["read"]\n'
        'when = "not (x <> claims.tenant_id)"'
    )
    alice = who(ALICE)
    assert isinstance(topic_rules.decide(rules, "t:TNT-ALPHA001", alice, private=True), Admitted)
    assert isinstance(topic_rules.decide(rules, "t:TNT-BETA0001", alice, private=True), Refused)
    without_tenant = Identity(
        subject=alice.subject, role="authenticated", bypass=False, claims={}, expires_at=1.0
    )
    decision = topic_rules.decide(rules, "t:TNT-ALPHA001", without_tenant, private=True)
    assert isinstance(decision, Refused)
    assert decision.reason == "when"


def test_a_rule_with_a_check_admits_once_it_has_run() -> None:
    decision = decide("case:CASE-AB000001", who(ALICE))
    assert isinstance(decision, Admitted)
    check = decision.check
    assert check is not None
    assert check.text == "SELECT 1 FROM nexus_cases WHERE id = %(case_id)s"
    assert check.params == {"case_id": "CASE-AB000001"}
    assert (check.role, check.subject, check.topic) == (
        "authenticated",
        ALICE[0],
        "case:CASE-AB000001",
    )
    # The claims as RLS reads them (request.jwt.claims), from what the relay verified.
    assert json.loads(check.claims) == {
        "sub": "USR-ALIC0001",
        "role": "authenticated",
        "exp": 2_000_000_000,
        "iat": 1_700_000_000.5,
        "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
    }


def test_a_bypass_role_joins_any_ruled_topic_with_every_action_and_no_check() -> None:
    for topic in ("case:CASE-AB000001", "tenant:TNT-ALPHA001", "room:lobby"):
        decision = decide(topic, SERVICE)
        assert isinstance(decision, Admitted), topic
        assert decision.actions == topic_rules.EVERY_ACTION
        assert decision.check is None


def test_a_private_only_rule_refuses_public_joins_even_to_a_bypass_role() -> None:
    assert isinstance(decide("vault:x", who(ALICE), private=True), Admitted)
    for identity in (who(ALICE), SERVICE):
        refusal = decide("vault:x", identity, private=False)
        assert isinstance(refusal, Refused)
        assert (refusal.code, refusal.reason) == (ErrorCode.TOPIC_PRIVATE_ONLY, "private_only")
    # Other rules take both kinds of join.
    assert isinstance(decide("tenant:TNT-ALPHA001", who(ALICE), private=False), Admitted)


def test_a_role_outside_the_policy_roles_is_refused() -> None:
    # identity_of never makes one; decide does not rely on it.
    anon = Identity(
        subject=who(ALICE).subject,
        role="anon",
        bypass=False,
        claims=who(ALICE).claims,
        expires_at=2_000_000_000,
    )
    refusal = decide("room:lobby", anon)
    assert isinstance(refusal, Refused)
    assert refusal.reason == "role"


def test_request_claims_skip_missing_and_conflicting_paths() -> None:
    identity = Identity(
        subject=who(ALICE).subject,
        role="authenticated",
        bypass=False,
        claims={"a": "1", "b": None, "c": "3"},
        expires_at=1.5,
    )
    paths = {"a": ("x", "a"), "b": ("x", "b"), "c": ("role", "c")}
    assert topic_rules.request_claims(identity, paths) == {
        "sub": "USR-ALIC0001",
        "role": "authenticated",  # not replaced by an object for claim c
        "exp": 1.5,
        "x": {"a": "1"},
    }
