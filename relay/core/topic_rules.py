"""Who may join which topic: the policy file's ``[topics]`` rules, and the decision.

Topics are the named channels of broadcast and presence (``case:CASE-AB000001``,
``room:lobby``). A rule gives a pattern, what members may do, and the
conditions a user must meet to join::

    [[topics.rules]]
    pattern = "case:{case_id}"        # {name} captures one segment (no ':')
    broadcast = ["read", "write"]     # receive, send broadcasts
    presence = ["read", "write"]      # receive presence, track
    when = "claims.tenant_id is not null"                 # optional, over claims and params
    check = "SELECT 1 FROM nexus_cases WHERE id = :case_id"  # optional, as the user under RLS
    private_only = false              # optional: true refuses joins without private: true

Deny by default: a topic that no rule matches is refused, to every role, for
private joins and public ones alike (Supabase's public channels need no
policy; ours do). At most one rule matches a topic: patterns that could match
the same topic are refused at load, so the order of rules never matters.

A join is decided in two steps. ``decide`` is pure: it finds the rule,
evaluates ``when`` (the policy language of ``relay.core.expressions``, where a
bare name is a captured parameter), and says which actions the user gets. If
the rule has a ``check``, the ``Admitted`` it returns carries a ``Check``: the
shell (``relay.topic_checks``) runs it in PostgreSQL as the user, under RLS,
and admits only if it returns a row, as Supabase runs the RLS policies of
``realtime.messages`` at join (lib/realtime/tenants/authorization.ex). A new
token is decided again the same way, and a refusal then ends the membership.

Roles in ``[roles] bypass`` (service_role) join any topic that a rule
matches, with every action, without ``when`` or ``check``: they bypass RLS.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.core import expressions
from relay.core.errors import ConfigError, ErrorCode
from relay.core.expressions import ClaimRef, ColumnRef, Evaluate, ParentRef
from relay.core.types import Claims

SEPARATOR = ":"
NAME = re.compile(r"[a-z_][a-z0-9_]*")
PLACEHOLDER = re.compile(r"\{(?P<name>[^{}]*)\}")
ACTIONS = ("read", "write")
RULE_KEYS = frozenset(("pattern", "broadcast", "presence", "when", "check", "private_only"))


# --- Rules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """A placeholder segment of a pattern: ``{name}``."""

    name: str


@dataclass(frozen=True, slots=True)
class Pattern:
    """A topic pattern: segments separated by ``:``, each a literal or a ``{name}``."""

    source: str
    segments: tuple[str | Param, ...]

    def match(self, topic: str) -> dict[str, str] | None:
        """The captured parameters if ``topic`` matches, else None. A parameter
        captures one whole segment, not empty."""
        parts = topic.split(SEPARATOR)
        if len(parts) != len(self.segments):
            return None
        params = {}
        for segment, part in zip(self.segments, parts, strict=True):
            if isinstance(segment, Param):
                if not part:
                    return None
                params[segment.name] = part
            elif segment != part:
                return None
        return params

    def overlaps(self, other: "Pattern") -> bool:
        """Whether some topic matches both."""
        if len(self.segments) != len(other.segments):
            return False
        for a, b in zip(self.segments, other.segments, strict=True):
            if isinstance(a, str) and isinstance(b, str) and a != b:
                return False
            # A parameter matches any segment but the empty one.
            if (isinstance(a, Param) and b == "") or (isinstance(b, Param) and a == ""):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Actions:
    """What a member of a topic may do (Supabase's broadcast and presence policies)."""

    broadcast_read: bool = False  # receive broadcasts
    broadcast_write: bool = False  # send broadcasts
    presence_read: bool = False  # receive presence_state and presence_diff
    presence_write: bool = False  # track


EVERY_ACTION = Actions(True, True, True, True)


@dataclass(frozen=True, slots=True)
class CheckQuery:
    """A rule's ``check``: its SQL as written, and as the shell runs it.

    ``text`` is in the DB-API's pyformat style (``%(case_id)s``, every other
    ``%`` doubled): values are always bound, never written into the SQL.
    """

    source: str
    text: str
    params: tuple[str, ...]  # the placeholders it uses, in order of first use


@dataclass(frozen=True)
class TopicRule:
    pattern: Pattern
    actions: Actions
    when: str | None
    evaluate: Evaluate | None  # ``when`` compiled: (params, {}, claims) -> truth
    check: CheckQuery | None
    private_only: bool


def describe(rule: TopicRule) -> str:
    """One line for ``check-policy``: the pattern, the actions, the conditions."""
    a = rule.actions
    granted = [
        f"{kind} {', '.join(name for name, on in actions if on)}"
        for kind, actions in (
            ("broadcast", (("read", a.broadcast_read), ("write", a.broadcast_write))),
            ("presence", (("read", a.presence_read), ("write", a.presence_write))),
        )
        if any(on for _, on in actions)
    ]
    line = f"topic {rule.pattern.source}: {'; '.join(granted)}"
    if rule.private_only:
        line += "; private joins only"
    if rule.when is not None:
        line += f"; when {rule.when}"
    if rule.check is not None:
        line += f"; check {' '.join(rule.check.source.split())}"
    return line


@dataclass(frozen=True)
class TopicRules:
    """The ``[topics]`` section of a policy file, with what deciding needs from the rest."""

    rules: tuple[TopicRule, ...] = ()
    # Where each declared claim is in a token, to give a check the claims as RLS reads them.
    claim_paths: Mapping[str, tuple[str, ...]] | None = None
    policy_roles: frozenset[str] = frozenset({"authenticated"})

    def find(self, topic: str) -> tuple[TopicRule, dict[str, str]] | None:
        """The rule that matches ``topic`` (there is at most one), with its parameters."""
        for rule in self.rules:
            params = rule.pattern.match(topic)
            if params is not None:
                return rule, params
        return None


# --- Parsing -------------------------------------------------------------------


def parse(
    section: Mapping[str, Any],
    claim_paths: Mapping[str, tuple[str, ...]],
    policy_roles: frozenset[str] = frozenset({"authenticated"}),
) -> TopicRules:
    """The ``[topics]`` section of a policy file; ``ConfigError`` says which rule is wrong, how."""
    if set(section) - {"rules"}:
        raise ConfigError(f"[topics]: unknown keys {sorted(set(section) - {'rules'})}")
    raw_rules = section.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("[topics] rules must be an array of tables: [[topics.rules]]")
    rules: list[TopicRule] = []
    for number, raw in enumerate(raw_rules, start=1):
        where = f"[[topics.rules]] #{number}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        if isinstance(raw.get("pattern"), str):
            where = f"{where} ({raw['pattern']!r})"
        try:
            rule = _rule(raw, claim_paths)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for earlier in rules:
            if earlier.pattern.overlaps(rule.pattern):
                raise ConfigError(
                    f"{where}: its pattern and {earlier.pattern.source!r} match the same "
                    f"topics (e.g. {_example(earlier.pattern, rule.pattern)!r}): a topic must "
                    "match at most one rule"
                )
        rules.append(rule)
    return TopicRules(tuple(rules), dict(claim_paths), policy_roles)


def _rule(raw: Mapping[str, Any], claim_paths: Mapping[str, tuple[str, ...]]) -> TopicRule:
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}")
    source = raw.get("pattern")
    if not isinstance(source, str):
        raise ConfigError('needs pattern = "<topic pattern>", e.g. "case:{case_id}"')
    pattern = parse_pattern(source)
    captured = {s.name for s in pattern.segments if isinstance(s, Param)}
    broadcast = _actions(raw, "broadcast")
    presence = _actions(raw, "presence")
    if "read" not in broadcast and "read" not in presence:
        # Supabase refuses a join that may read neither (realtime_channel.ex).
        raise ConfigError('grants no "read": members must receive broadcast or presence')
    actions = Actions(
        "read" in broadcast, "write" in broadcast, "read" in presence, "write" in presence
    )

    when = raw.get("when")
    evaluate = None
    if when is not None:
        if not isinstance(when, str):
            raise ConfigError('when must be a string: "<expression>"')
        evaluate = _when(when, captured, claim_paths)

    check_source = raw.get("check")
    check = None
    if check_source is not None:
        if not isinstance(check_source, str):
            raise ConfigError('check must be a string: "SELECT ..."')
        check = parse_check(check_source)
        missing = [name for name in check.params if name not in captured]
        if missing:
            raise ConfigError(
                f"check: :{missing[0]} is not a placeholder of the pattern "
                f"(it captures {sorted(captured) or 'nothing'})"
            )

    private_only = raw.get("private_only", False)
    if not isinstance(private_only, bool):
        raise ConfigError("private_only must be true or false")
    return TopicRule(pattern, actions, when, evaluate, check, private_only)


def parse_pattern(source: str) -> Pattern:
    """A topic pattern; ``ConfigError`` if it is not one."""
    if not source:
        raise ConfigError("the pattern is empty")
    if any(not c.isprintable() or c.isspace() for c in source):
        raise ConfigError("a pattern has no spaces or control characters")
    segments: list[str | Param] = []
    for part in source.split(SEPARATOR):
        if "{" not in part and "}" not in part:
            segments.append(part)
            continue
        placeholder = PLACEHOLDER.fullmatch(part)
        if placeholder is None:
            raise ConfigError(
                f"{part!r}: a placeholder is a whole segment, between ':' (\"case:{{case_id}}\")"
            )
        name = placeholder["name"]
        if NAME.fullmatch(name) is None:
            raise ConfigError(f"{{{name}}}: a placeholder's name is of a-z, 0-9 and _")
        if any(isinstance(s, Param) and s.name == name for s in segments):
            raise ConfigError(f"{{{name}}} appears twice")
        segments.append(Param(name))
    return Pattern(source, tuple(segments))


def _example(a: Pattern, b: Pattern) -> str:
    """A topic that overlapping patterns ``a`` and ``b`` both match."""
    parts = []
    for x, y in zip(a.segments, b.segments, strict=True):
        parts.append(x if isinstance(x, str) else y if isinstance(y, str) else "x")
    return SEPARATOR.join(parts)


def _actions(raw: Mapping[str, Any], key: str) -> frozenset[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(v in ACTIONS for v in value):
        raise ConfigError(f'{key} must be a list of "read" and "write"')
    return frozenset(value)


def _when(source: str, captured: set[str], claim_paths: Mapping[str, Any]) -> Evaluate:
    try:
        expr = expressions.parse(source)
    except expressions.ExpressionError as exc:
        raise ConfigError(f"when: {exc}") from None
    for operand, _ in expressions.operands(expr):
        if isinstance(operand, ColumnRef) and operand.name not in captured:
            raise ConfigError(
                f"when: {operand.name!r} is not a placeholder of the pattern "
                f"(it captures {sorted(captured) or 'nothing'})"
            )
        if isinstance(operand, ParentRef):
            raise ConfigError("when: a topic has no parents; use placeholders and claims")
        if isinstance(operand, ClaimRef) and operand.name not in claim_paths:
            raise ConfigError(f"when: claims.{operand.name} is not declared in [claims]")
    return expressions.compile_expr(expr)


# --- The SQL check -------------------------------------------------------------

_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*(?P<word>[A-Za-z]+)", re.DOTALL)
_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def parse_check(source: str) -> CheckQuery:
    """A rule's ``check``: one ``SELECT`` (or ``WITH``) whose ``:name`` are bound parameters.

    The text is scanned as PostgreSQL's lexer would for what matters here:
    ``:name`` in a string, a quoted identifier or a comment is not a
    parameter, ``::`` is a cast. ``;`` (a second statement) and ``$1``
    (positional parameters) are refused.
    """
    first = _FIRST_WORD.match(source)
    if first is None or first["word"].lower() not in ("select", "with"):
        raise ConfigError("check: must be a query, SELECT ... (or WITH ...)")
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        nxt = source[i + 1] if i + 1 < n else ""
        if c == "-" and nxt == "-":
            end = source.find("\n", i)
            end = n if end < 0 else end
        elif c == "/" and nxt == "*":
            end = _comment_end(source, i)
        elif c == "'":
            escapes = i > 0 and source[i - 1] in "eE" and not _is_ident(source, i - 2)
            end = _quoted_end(source, i, "'", escapes)
        elif c == '"':
            end = _quoted_end(source, i, '"', False)
        elif c == "$" and _is_ident(source, i - 1):
            end = i + 1  # part of an identifier (PostgreSQL allows $ after the first letter)
        elif c == "$" and nxt.isdigit():
            raise ConfigError("check: write parameters as :name, not $1")
        elif c == "$" and (tag := _DOLLAR_TAG.match(source, i)) is not None:
            close = source.find(tag.group(), tag.end())
            if close < 0:
                raise ConfigError(f"check: unterminated dollar-quoted string {tag.group()}")
            end = close + len(tag.group())
        elif c == ":" and nxt == ":":
            end = i + 2  # a cast
        elif c == ":" and _IDENT_START.match(nxt):
            name = _IDENT.match(source, i + 1)
            assert name is not None
            names.append(name.group())
            out.append(f"%({name.group()})s")
            i = name.end()
            continue
        elif c == ";":
            raise ConfigError("check: one query, without ';'")
        else:
            end = i + 1
        out.append(source[i:end].replace("%", "%%"))
        i = end
    return CheckQuery(source, "".join(out), tuple(dict.fromkeys(names)))


def _is_ident(source: str, i: int) -> bool:
    return i >= 0 and (source[i].isalnum() or source[i] in "_$")


def _quoted_end(source: str, start: int, quote: str, escapes: bool) -> int:
    """The end of the string or quoted identifier opened at ``start``."""
    i = start + 1
    while i < len(source):
        if escapes and source[i] == "\\":
            i += 2
            continue
        if source[i] == quote:
            if source[i + 1 : i + 2] == quote:  # a doubled quote
                i += 2
                continue
            return i + 1
        i += 1
    what = "string" if quote == "'" else "quoted identifier"
    raise ConfigError(f"check: unterminated {what} at position {start}")


def _comment_end(source: str, start: int) -> int:
    """The end of the block comment opened at ``start``; they nest in PostgreSQL."""
    depth, i = 0, start
    while i < len(source) - 1:
        pair = source[i : i + 2]
        if pair == "/*":
            depth, i = depth + 1, i + 2
        elif pair == "*/":
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise ConfigError(f"check: unterminated comment at position {start}")


# --- Deciding ------------------------------------------------------------------


class Verified(Protocol):
    """Who a verified token speaks for (``relay.core.tokens.Identity``)."""

    @property
    def subject(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def bypass(self) -> bool: ...
    @property
    def claims(self) -> Claims: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def issued_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Check:
    """A rule's SQL check for one join, ready to run (``relay.topic_checks``):
    as ``role``, with ``claims`` in ``request.jwt.claims``, ``text`` with ``params`` bound."""

    topic: str
    pattern: str
    text: str
    params: Mapping[str, str]
    role: str
    subject: str
    claims: str  # JSON


@dataclass(frozen=True, slots=True)
class Admitted:
    """The user may join ``topic`` by ``rule``, with ``actions``; once ``check``
    (if any) has returned a row."""

    topic: str
    rule: TopicRule
    params: Mapping[str, str]
    actions: Actions
    check: Check | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The user may not join ``topic``. ``code`` and ``message`` are for the
    client and say nothing of the rules; ``reason`` is for the operator:
    ``no_rule``, ``private_only``, ``role``, ``when``, ``check`` (it returned
    no row), ``check_error`` (it failed)."""

    topic: str
    code: ErrorCode
    message: str
    reason: str


def refused(topic: str, reason: str) -> Refused:
    if reason == "private_only":
        return Refused(
            topic,
            ErrorCode.TOPIC_PRIVATE_ONLY,
            f"the topic {topic!r} may only be joined as a private channel",
            reason,
        )
    # The same message whatever the reason: a client learns nothing of the rules.
    return Refused(
        topic, ErrorCode.TOPIC_NOT_ALLOWED, f"you may not join the topic {topic!r}", reason
    )


def decide(rules: TopicRules, topic: str, who: Verified, *, private: bool) -> Admitted | Refused:
    """Whether ``who`` may join ``topic``, and with which actions.

    ``private`` is the join's ``config.private``. An ``Admitted`` with a
    ``check`` is not final: run it (``relay.topic_checks.confirm``). Call
    again with the new identity when the token is refreshed.
    """
    found = rules.find(topic)
    if found is None:
        return refused(topic, "no_rule")
    rule, params = found
    if rule.private_only and not private:
        return refused(topic, "private_only")
    if who.bypass:
        return Admitted(topic, rule, params, EVERY_ACTION, None)
    if who.role not in rules.policy_roles:
        return refused(topic, "role")
    if rule.evaluate is not None and rule.evaluate(params, {}, who.claims) is not True:
        return refused(topic, "when")
    check = None
    if rule.check is not None:
        check = Check(
            topic,
            rule.pattern.source,
            rule.check.text,
            {name: params[name] for name in rule.check.params},
            who.role,
            who.subject,
            json.dumps(request_claims(who, rules.claim_paths or {}), sort_keys=True),
        )
    return Admitted(topic, rule, params, rule.actions, check)


def request_claims(who: Verified, claim_paths: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The claims a check sees in ``request.jwt.claims``: the token's verified
    ``sub``, ``role``, ``exp``, ``iat``, and each declared claim at its path
    (``app_metadata.tenant_id``), as RLS policies read them. Claims the policy
    file does not declare are not kept by the relay, and not passed."""
    claims: dict[str, Any] = {"sub": who.subject, "role": who.role, "exp": _number(who.expires_at)}
    if who.issued_at is not None:
        claims["iat"] = _number(who.issued_at)
    for name, path in claim_paths.items():
        value = who.claims.get(name)
        if value is None or not path:
            continue
        node = claims
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(path[-1], value)
    return claims


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value
