"""PostgreSQL's regular expressions (``~`` and ``~*``), the part the relay decides exactly.

PostgreSQL reads a pattern as an ARE, its "advanced regular expression"
(PostgreSQL docs, 9.7.3). Python's ``re`` reads the same text otherwise in
places — ``$`` also before a final newline, ``\\b`` a word boundary (ARE: a
backspace), ``{,3}`` a bound (ARE: the characters), ``\\d`` any Unicode digit,
``K`` equal to the Kelvin sign when ignoring case — and it backtracks: a
pattern such as ``(a+)+$`` takes exponential time on a hostile text (ReDoS).
So the relay reads a conservative subset of AREs itself, refuses the rest
(``Unsupported``, naming the construct), and matches without backtracking.

The subset: characters; ``.``; ``[...]`` of characters, ranges and
``[:digit:]``-style classes (``^`` first negates); ``\\d \\w \\s``, and
``\\D \\W \\S`` outside brackets; ``^`` and ``$``; ``|``; ``(...)`` and
``(?:...)``; the quantifiers ``* + ? {m} {m,} {m,n}``, each optionally
followed by ``?`` (non-greedy, which changes what is matched, not whether);
``\\n \\t \\r \\f \\v``; and ``\\`` before an ASCII punctuation character, for
that character. A pattern may match anywhere in the text (``~`` searches);
``.`` matches a newline and ``^ $`` only the ends of the text, as PostgreSQL's
matching is not newline-sensitive unless asked (with ``(?n)``, refused).
Ranges are of code points, whatever the collation, as PostgreSQL's are.

Classes and case depend on the column's ctype (``Ctype``). Under ``C`` both
are ASCII's (PostgreSQL's regc_pg_locale.c, strategy C). Under libc's
``C.UTF-8``, ``\\d`` is still ``0-9`` (C's iswdigit), but which characters are
letters or spaces is the C library's: ``\\w``, ``\\s`` and the other classes
are refused there. Ignoring case (``~*``), PostgreSQL matches a character of
the pattern by its lower and upper case (regc_locale.c, allcases); for ASCII
letters that is the relay's too, and a pattern character outside ASCII that
has a case is refused under ``C.UTF-8``.
"""

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from relay.core.values import Ctype

# A step that the cache does not hold costs up to one operation per state.
MAX_STATES = 200
MAX_DEPTH = 32
# PostgreSQL refuses bounds above DUPMAX (regguts.h).
MAX_BOUND = 255
# DFA steps, and characters' state masks, cached per pattern (about 200 kB at
# most); beyond, the cache starts again, and matching stays linear.
MAX_CACHED = 2048


class Invalid(ValueError):
    """A pattern that PostgreSQL would not compile either."""


class Unsupported(ValueError):
    """A pattern outside the subset the relay decides exactly as PostgreSQL does."""


@dataclass(frozen=True)
class _Set:
    """The characters one position of the text may hold."""

    chars: frozenset[str]
    ranges: tuple[tuple[int, int], ...]  # code points, both ends included
    negated: bool = False

    def __contains__(self, char: str) -> bool:
        found = char in self.chars or any(low <= ord(char) <= high for low, high in self.ranges)
        return found is not self.negated

    def with_cases(self) -> "_Set":
        """The set with the other case of every ASCII letter in it (before negating)."""
        chars = self.chars | {c.swapcase() for c in self.chars if c.isascii() and c.isalpha()}
        ranges = list(self.ranges)
        for low, high, shift in ((65, 90, 32), (97, 122, -32)):
            for start, end in self.ranges:
                if start <= high and end >= low:
                    ranges.append((max(start, low) + shift, min(end, high) + shift))
        return _Set(frozenset(chars), tuple(ranges), self.negated)


_ANY = _Set(frozenset(), (), negated=True)
_DIGIT = ((48, 57),)
_UPPER = ((65, 90),)
_LOWER = ((97, 122),)
# PostgreSQL's character classes under a C ctype: ASCII's (pg_char_properties).
_ASCII_CLASSES: dict[str, _Set] = {
    "digit": _Set(frozenset(), _DIGIT),
    "alpha": _Set(frozenset(), _UPPER + _LOWER),
    "alnum": _Set(frozenset(), _DIGIT + _UPPER + _LOWER),
    "upper": _Set(frozenset(), _UPPER),
    "lower": _Set(frozenset(), _LOWER),
    "space": _Set(frozenset(" \t\n\r\f\v"), ()),
    "xdigit": _Set(frozenset(), (*_DIGIT, (65, 70), (97, 102))),
}
# ARE class escapes (PostgreSQL docs, Table 9.21): \w is [[:alnum:]_].
_ESCAPE_CLASSES = {"d": "digit", "s": "space", "w": "alnum"}
_ENTRY_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_QUANTIFIERS = "*+?{"
_BOUND = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")


# The pattern, read: a tree of these.
@dataclass(frozen=True)
class _Char:
    chars: _Set


@dataclass(frozen=True)
class _Anchor:
    end: bool  # $ if true, ^ if not


@dataclass(frozen=True)
class _Sequence:
    items: tuple["_Node", ...]


@dataclass(frozen=True)
class _Either:
    branches: tuple["_Node", ...]


@dataclass(frozen=True)
class _Repeat:
    item: "_Node"
    least: int
    most: int | None


_Node = _Char | _Anchor | _Sequence | _Either | _Repeat


class _Reader:
    """Reads a pattern into a tree, refusing what is outside the subset."""

    def __init__(self, pattern: str, ignore_case: bool, ctype: Ctype) -> None:
        self.pattern = pattern
        self.at = 0
        self.ignore_case = ignore_case
        self.ctype = ctype

    def read(self) -> _Node:
        node = self.either(depth=0)
        if self.at < len(self.pattern):  # only a ")" stops either() early
            raise Invalid(f"unbalanced ')' at position {self.at}")
        return node

    def peek(self) -> str:
        return self.pattern[self.at] if self.at < len(self.pattern) else ""

    def either(self, depth: int) -> _Node:
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.at += 1
            branches.append(self.sequence(depth))
        return branches[0] if len(branches) == 1 else _Either(tuple(branches))

    def sequence(self, depth: int) -> _Node:
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom(depth)
            if self.peek() and self.peek() in _QUANTIFIERS:
                if isinstance(atom, _Anchor):
                    raise Unsupported(f"a quantifier after {'$' if atom.end else '^'}")
                atom = self.quantified(atom)
            items.append(atom)
        return items[0] if len(items) == 1 else _Sequence(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        char = self.pattern[self.at]
        self.at += 1
        if char == "{":
            least, most = self.bound()
        else:
            least, most = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        if self.peek() == "?":  # non-greedy: what is matched, not whether
            self.at += 1
        if self.peek() and self.peek() in _QUANTIFIERS:
            raise Unsupported(f"a quantifier after a quantifier, at position {self.at}")
        return _Repeat(atom, least, most)

    def bound(self) -> tuple[int, int | None]:
        found = _BOUND.match(self.pattern, self.at - 1)
        if found is None:
            raise Unsupported(
                f"'{{' at position {self.at - 1} that does not start a bound {{m}}, {{m,}} or"
                " {m,n}; write \\{ for the character"
            )
        self.at = found.end()
        least = int(found[1])
        most = least if found[2] is None else int(found[3]) if found[3] else None
        if least > MAX_BOUND or (most is not None and most > MAX_BOUND):
            raise Invalid(f"{found[0]}: a bound above {MAX_BOUND}")
        if most is not None and least > most:
            raise Invalid(f"{found[0]}: a bound whose minimum exceeds its maximum")
        return least, most

    def atom(self, depth: int) -> _Node:
        char = self.pattern[self.at]
        self.at += 1
        if char == "(":
            if self.pattern.startswith("?:", self.at):
                self.at += 2
            elif self.peek() == "?":
                raise Unsupported(f"'(?' at position {self.at - 1}: only (?:...) is supported")
            if depth >= MAX_DEPTH:
                raise Unsupported(f"parentheses nest at most {MAX_DEPTH} deep")
            inner = self.either(depth + 1)
            if self.peek() != ")":
                raise Invalid("unbalanced '('")
            self.at += 1
            return inner
        if char == "[":
            return _Char(self.bracket())
        if char == ".":
            return _Char(_ANY)
        if char in "^$":
            return _Anchor(end=char == "$")
        if char == "\\":
            return _Char(self.escape(in_brackets=False))
        if char in "*+?{":
            raise Unsupported(f"'{char}' at position {self.at - 1} repeats nothing")
        return _Char(self.literal(char))

    def literal(self, char: str) -> _Set:
        if self.ignore_case:
            self.check_case(char)
            return _Set(frozenset(char), ()).with_cases()
        return _Set(frozenset(char), ())

    def check_case(self, char: str) -> None:
        # Under a C ctype, PostgreSQL gives case to ASCII letters only, as the relay does.
        if self.ctype == "C" or char.isascii():
            return
        if char.lower() != char or char.upper() != char or unicodedata.category(char) == "Cn":
            raise Unsupported(
                f"ignoring the case of {char!r} (U+{ord(char):04X}): under"
                f" {self.ctype}, the relay knows the case of ASCII letters only"
            )

    def escape(self, in_brackets: bool) -> _Set:
        if self.at >= len(self.pattern):
            raise Invalid("a pattern must not end with \\")
        char = self.pattern[self.at]
        self.at += 1
        if char.lower() in _ESCAPE_CLASSES:
            if char.isupper() and in_brackets:
                raise Unsupported(f"\\{char} inside [...]")
            found = self.named_class(_ESCAPE_CLASSES[char.lower()], f"\\{char}")
            chars = found.chars | ({"_"} if char.lower() == "w" else set())
            return _Set(chars, found.ranges, negated=char.isupper())
        if char in _ENTRY_ESCAPES:
            return _Set(frozenset(_ENTRY_ESCAPES[char]), ())
        if char.isascii() and not char.isalnum():
            return self.literal(char)
        raise Unsupported(f"the escape \\{char}")

    def named_class(self, name: str, spelled: str) -> _Set:
        # C's iswdigit, which C.UTF-8 keeps, is 0-9 only (C99 7.25.2.1.5).
        if self.ctype == "C" or (name == "digit" and self.ctype == "C.UTF-8"):
            return _ASCII_CLASSES[name]
        raise Unsupported(
            f"{spelled}: which characters are in it depends on the column's ctype"
            f" ({self.ctype or 'not C'}); the relay knows C's"
            + (", and \\d under C.UTF-8" if name != "digit" else "")
        )

    def bracket(self) -> _Set:
        start = self.at - 1
        negated = self.peek() == "^"
        if negated:
            self.at += 1
        chars: set[str] = set()
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.at >= len(self.pattern):
                raise Invalid(f"the '[' at position {start} is not closed")
            char = self.pattern[self.at]
            if char == "]" and not first:
                self.at += 1
                break
            if char == "-" and not first and self.pattern[self.at + 1 : self.at + 2] != "]":
                raise Unsupported(
                    f"'-' at position {self.at} inside [...]: write \\- or put it first or last"
                )
            first = False
            element = self.bracket_element()
            if isinstance(element, str) and self.pattern.startswith("-", self.at):
                following = self.pattern[self.at + 1 : self.at + 2]
                if following not in ("", "]"):
                    self.at += 1
                    end = self.bracket_element()
                    if not isinstance(end, str):
                        raise Unsupported("a range that ends with a class")
                    if ord(end) < ord(element):
                        raise Invalid(f"the range {element}-{end} is out of order")
                    if self.ignore_case:
                        self.check_range_case(ord(element), ord(end))
                    ranges.append((ord(element), ord(end)))
                    continue
            if isinstance(element, str):
                if self.ignore_case:
                    self.check_case(element)
                chars.add(element)
            else:
                chars |= element.chars
                ranges.extend(element.ranges)
        found = _Set(frozenset(chars), tuple(ranges), negated)
        return found.with_cases() if self.ignore_case else found

    def bracket_element(self) -> "str | _Set":
        """A character, or the class of ``[:name:]`` or of an escape."""
        char = self.pattern[self.at]
        self.at += 1
        if char == "[" and self.peek() in (".", "=", ":"):
            kind = self.peek()
            end = self.pattern.find(kind + "]", self.at + 1)
            if kind != ":" or end < 0:
                raise Unsupported(f"'[{kind}' at position {self.at - 1} inside [...]")
            name = self.pattern[self.at + 1 : end]
            self.at = end + 2
            if name not in _ASCII_CLASSES:
                raise Unsupported(f"the class [:{name}:]")
            return self.named_class(name, f"[:{name}:]")
        if char == "\\":
            found = self.escape(in_brackets=True)
            if not found.ranges and len(found.chars) == 1 and not found.negated:
                return next(iter(found.chars))  # an escaped character
            return found
        return char

    def check_range_case(self, low: int, high: int) -> None:
        if self.ctype == "C" or high < 128:
            return
        if high - max(low, 128) > 0xFFFF:
            raise Unsupported("ignoring case, a range beyond ASCII as wide as this one")
        for point in range(max(low, 128), high + 1):
            self.check_case(chr(point))


class Regex:
    """A pattern, read as PostgreSQL reads it, matched in time linear in the text.

    The tree becomes a Thompson NFA; matching follows every state at once, so
    no text makes it backtrack. A set of states is an int, a bit per state;
    the states reached after reading a character from a state are computed
    once, when the pattern is read. The sets met are cached as the states of
    a DFA: once the pattern is warm, a character of a text costs one dict
    look-up, and at worst one operation per state of the NFA (MAX_STATES).
    """

    def __init__(self, pattern: str, *, ignore_case: bool = False, ctype: Ctype = None) -> None:
        if ignore_case and ctype is None:
            raise Unsupported("ignoring case under a ctype the relay does not know")
        tree = _Reader(pattern, ignore_case, ctype).read()
        # The NFA: states are indexes; each is a character set to pass, a
        # split, an anchor, or the match.
        self.sets: list[_Set | None] = []
        self.next: list[list[int]] = []
        self.anchors: dict[int, bool] = {}  # state: end (True for $)
        self.accept = self._state(None, [])
        self.start = self._compile(tree, self.accept)
        self.first = self._closure([self.start], at_start=True)
        self.anywhere = self._closure([self.start], at_start=False)
        # After reading a character that a state takes, the states reached.
        self.after = [
            0 if chars is None else self._closure(following, at_start=False)
            for chars, following in zip(self.sets, self.next, strict=True)
        ]
        # The states from which the end of a (non-empty) text is a match.
        self.done = sum(
            1 << state
            for state in range(len(self.sets))
            if self._closure([state], at_start=False, at_end=True) >> self.accept & 1
        )
        self.masks: dict[str, int] = {}
        self.steps: dict[tuple[int, str], int] = {}

    def _state(self, chars: _Set | None, following: list[int]) -> int:
        if len(self.sets) >= MAX_STATES:
            raise Unsupported(f"a pattern of more than {MAX_STATES} states (long, or large bounds)")
        self.sets.append(chars)
        self.next.append(following)
        return len(self.sets) - 1

    def _compile(self, node: _Node, then: int) -> int:
        """The state that starts ``node``, followed by ``then``."""
        if isinstance(node, _Char):
            return self._state(node.chars, [then])
        if isinstance(node, _Anchor):
            state = self._state(None, [then])
            self.anchors[state] = node.end
            return state
        if isinstance(node, _Sequence):
            for item in reversed(node.items):
                then = self._compile(item, then)
            return then
        if isinstance(node, _Either):
            return self._state(None, [self._compile(b, then) for b in node.branches])
        rest = then
        if node.most is None:
            loop = self._state(None, [])
            self.next[loop] = [self._compile(node.item, loop), then]
            rest = loop
        else:
            for _ in range(node.most - node.least):
                rest = self._state(None, [self._compile(node.item, rest), then])
        for _ in range(node.least):
            rest = self._compile(node.item, rest)
        return rest

    def _closure(self, states: Iterable[int], at_start: bool, at_end: bool = False) -> int:
        """The states reached without reading a character — those that read
        one, the match, and the ``$`` not yet passed (at_end passes it) — as bits."""
        todo, seen, found = list(states), set(), 0
        while todo:
            state = todo.pop()
            if state in seen:
                continue
            seen.add(state)
            end = self.anchors.get(state)
            if end is None and self.sets[state] is None and state != self.accept:
                todo.extend(self.next[state])  # a split, or a group's entry
            elif end is None:
                found |= 1 << state
            elif at_end if end else at_start:
                todo.extend(self.next[state])
            elif end:
                found |= 1 << state  # $: passed only at the end of the text
        return found

    def _mask(self, char: str) -> int:
        """The states that take ``char``."""
        mask = self.masks.get(char)
        if mask is None:
            mask = sum(
                1 << state
                for state, chars in enumerate(self.sets)
                if chars is not None and char in chars
            )
            if len(self.masks) >= MAX_CACHED:
                self.masks.clear()
            self.masks[char] = mask
        return mask

    def _step(self, states: int, char: str) -> int:
        key = (states, char)
        reached = self.steps.get(key)
        if reached is None:
            reached, taking, after = self.anywhere, states & self._mask(char), self.after
            while taking:
                lowest = taking & -taking
                reached |= after[lowest.bit_length() - 1]
                taking ^= lowest
            if len(self.steps) >= MAX_CACHED:
                self.steps.clear()
            self.steps[key] = reached
        return reached

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text`` (``text ~ pattern``)."""
        if not text:
            return bool(self._closure([self.start], at_start=True, at_end=True) >> self.accept & 1)
        states, accept = self.first, self.accept
        for char in text:
            if states >> accept & 1:
                return True
            states = self._step(states, char)
        return bool(states & self.done)
