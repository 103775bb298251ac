"""`.dockerignore` with Docker's semantics (moby's patternmatcher), not gitignore's.

The differences matter because kiln must never drop a file ``docker build`` would send:

- patterns are anchored at the context root: ``foo`` matches ``foo`` (and everything under it),
  never ``sub/foo`` (gitignore would match both);
- ``*`` and ``?`` never cross a ``/``; ``**`` spans any number of directories;
- ``!`` exceptions are applied in file order, and a later exception can re-include a file below
  an excluded directory (gitignore cannot);
- a pattern matching a directory matches everything beneath it (parent-directory matching).

A Dockerfile-specific ``<name>.dockerignore`` beside the Dockerfile replaces the root one, as
in BuildKit. The file is read the way Docker's CLI reads it (``ignorefile.ReadAll``): a line
starting with ``#`` is a comment, lines are trimmed, each pattern is ``filepath.Clean``-ed and a
leading ``/`` is dropped.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from kiln.errors import ContextError

DOCKERIGNORE = ".dockerignore"

_COMMENT = "#"
_EXCEPTION = "!"
_UTF8_BOM = "\ufeff"
_SEP = "/"
_DOUBLE_STAR = "**"
# Characters that make a pattern a glob (fsutil's list). An exception without any of them names
# a fixed path, which lets the walker skip an excluded directory unless that path lies beneath it.
_GLOB_CHARS = frozenset("*?[]^\\")
_FIX_HINT = "fix or remove this line of .dockerignore (patterns follow Go's filepath.Match syntax)"


def read_dockerignore(
    context_dir: str | os.PathLike[str], *, dockerfile: str | os.PathLike[str] | None = None
) -> list[str]:
    """The cleaned patterns that apply to the context; no ignore file means no patterns.

    As in BuildKit, ``<dockerfile>.dockerignore`` next to the Dockerfile, when it exists, is
    used instead of ``<context_dir>/.dockerignore``.
    """
    path = Path(context_dir) / DOCKERIGNORE
    if dockerfile is not None:
        specific = Path(f"{os.fspath(dockerfile)}{DOCKERIGNORE}")
        if specific.is_file():
            path = specific
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ContextError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint=f"make {path.name} readable, or remove it",
        ) from exc
    # Go strings are bytes: keep undecodable bytes as they are instead of failing.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix(_UTF8_BOM)
    return [p for p in map(_clean_line, text.split("\n")) if p is not None]


def _clean_line(line: str) -> str | None:
    """One line as Docker keeps it, or None for comments and blank lines."""
    # The comment test comes before trimming, as in Docker: `  # x` is a pattern.
    if line.startswith(_COMMENT):
        return None
    pattern = line.strip()
    if not pattern:
        return None
    exception = pattern.startswith(_EXCEPTION)
    if exception:
        pattern = pattern[1:].strip()
    if pattern:
        pattern = _go_clean(pattern)
        if len(pattern) > 1 and pattern.startswith(_SEP):
            pattern = pattern[1:]
    return _EXCEPTION + pattern if exception else pattern


def _go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on a slash path (normpath keeps a leading ``//``; Go does not)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = _SEP + cleaned.lstrip(_SEP)
    return cleaned


@attrs.frozen
class _Pattern:
    """One compiled pattern; ``test`` says whether it matches a whole slash path."""

    text: str
    exclusion: bool
    test: Callable[[str], bool]

    @property
    def has_glob(self) -> bool:
        """fsutil's test for an exception that may match below a directory it does not name:
        a glob character left once a trailing ``/**`` or ``/*`` is trimmed."""
        return any(ch in _GLOB_CHARS for ch in self.without_trailing_glob)

    @property
    def without_trailing_glob(self) -> str:
        return self.text.removesuffix(_SEP + _DOUBLE_STAR).removesuffix(_SEP + "*")


# Per pattern: whether it matched the directory itself (moby's MatchInfo.parentMatched).
MatchInfo = tuple[bool, ...]
# Directories whose match results are kept for their children; the walk visits a directory's
# children together, so a small cache holds every parent it needs.
_PARENT_CACHE_SIZE = 4096


class PatternMatcher:
    """Decides which context paths a list of `.dockerignore` patterns excludes.

    Mirrors BuildKit's context walk (fsutil), which calls moby's
    ``PatternMatcher.MatchesUsingParentResults`` with the results of the parent directory:
    patterns apply in order; a plain pattern excludes a path when it matches the path or matched
    a parent directory, and an ``!`` pattern re-includes it the same way. A pattern whose turn
    was skipped at the parent (an exception while the parent was not excluded) is tested
    against the path alone, so with ``**/node_modules`` then ``!packages``, the file
    ``packages/node_modules/x`` stays excluded, as in BuildKit.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [p for p in map(_compile, patterns) if p is not None]
        self._exceptions = [p for p in self._patterns if p.exclusion]
        self._glob_exception = any(p.has_glob for p in self._exceptions)
        self._parents: dict[str, MatchInfo] = {}
        self._tests = [(p.exclusion, p.test) for p in self._patterns]
        self._no_parent: MatchInfo = (False,) * len(self._patterns)

    def matches(self, rel_posix_path: str) -> bool:
        """True when the path (slash-separated, relative to the context) is excluded."""
        return self.match(rel_posix_path, self._parent_info(rel_posix_path))[0]

    def match(self, rel_posix_path: str, parent: MatchInfo | None) -> tuple[bool, MatchInfo]:
        """moby's ``MatchesUsingParentResults``: whether the path is excluded, and the per-pattern
        results its children need. ``parent`` is its directory's, None at the context root."""
        excluded = False
        info: list[bool] = []
        parents = parent if parent is not None else self._no_parent
        for (exclusion, test), parent_hit in zip(self._tests, parents, strict=True):
            # An exclusion can only flip an excluded path back, a plain pattern only the reverse.
            hit = parent_hit or (exclusion == excluded and test(rel_posix_path))
            info.append(hit)
            if hit:
                excluded = not exclusion
        return excluded, tuple(info)

    def _parent_info(self, path: str) -> MatchInfo | None:
        parent, sep, _ = path.rpartition(_SEP)
        if not sep:
            return None
        info = self._parents.get(parent)
        if info is None:
            info = self.match(parent, self._parent_info(parent))[1]
            if len(self._parents) >= _PARENT_CACHE_SIZE:
                self._parents.clear()
            self._parents[parent] = info
        return info

    def may_include_beneath(self, rel_dir: str) -> bool:
        """Whether an ``!`` pattern could re-include something below an excluded directory.

        When this is False the walker may skip the directory, as BuildKit does. An exception
        with a glob could match anywhere, so it keeps every excluded directory walked (fsutil
        does the same); a fixed exception only keeps the directories on its own path.
        """
        if self._glob_exception:
            return True
        prefix = rel_dir + _SEP
        return any((p.without_trailing_glob + _SEP).startswith(prefix) for p in self._exceptions)


def _compile(raw: str) -> _Pattern | None:
    text = raw.strip()
    if not text:
        return None
    text = _go_clean(text)
    exclusion = text.startswith(_EXCEPTION)
    if exclusion:
        if len(text) == 1:
            raise ContextError('illegal exclusion pattern: "!"', hint=_FIX_HINT)
        text = text[1:]
    return _Pattern(text=text, exclusion=exclusion, test=_matcher_for(text))


def _matcher_for(text: str) -> Callable[[str], bool]:
    """moby's match types: exact, ``foo**`` prefix, ``**foo`` suffix, else an automaton.

    The prefix and suffix shortcuts are not equivalent to the general form (``**foo`` matches
    ``barfoo``); they are kept because they are what Docker does.
    """
    nodes, kind = _translate(text)
    if kind == "exact":
        return lambda path: path == text
    if kind == "prefix":
        prefix = text[: -len(_DOUBLE_STAR)]
        return lambda path: path.startswith(prefix)
    if kind == "suffix":
        suffix = text[len(_DOUBLE_STAR) :]
        return lambda path: (
            path.endswith(suffix) or (suffix.startswith(_SEP) and path == suffix[1:])
        )
    return _Automaton(nodes).fullmatch


# Node kinds of the automaton a glob compiles to (a Thompson NFA over characters).
_ONE = 0  # consume one character the node accepts, then go on
_LOOP = 1  # consume any number of characters the node accepts, then go on
_SKIP = 2  # go on, or jump to `target` (the optional `**/` group)
_AT_START = 3  # go on only before the first character (Go's `^` outside a class)
# Stepped state sets kept per automaton; past this the cache starts over (memory stays bounded).
_STEP_CACHE_SIZE = 4096


@attrs.frozen
class _Node:
    kind: int
    accepts: Callable[[str], bool] = attrs.field(default=lambda ch: False)
    target: int = 0


def _not_sep(ch: str) -> bool:
    return ch != _SEP


def _not_newline(ch: str) -> bool:
    # moby's regexp uses Go's `.`, which does not match a newline.
    return ch != "\n"


def _is_sep(ch: str) -> bool:
    return ch == _SEP


def _literal(expected: str) -> Callable[[str], bool]:
    return expected.__eq__


class _Automaton:
    """A glob matched by simulating its NFA, with stepped state sets cached (a lazy DFA).

    Time is linear in the path's length for any pattern: no backtracking, unlike a regular
    expression engine with `*` after `*` (``*a*a*a*a*a*c`` took Python's `re` minutes; Go's
    RE2, which Docker uses, is linear too).
    """

    def __init__(self, nodes: Sequence[_Node]) -> None:
        self._nodes = tuple(nodes)
        self._accept = len(self._nodes)
        self._start = self._closure({0}, at_start=True)
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}

    def fullmatch(self, text: str) -> bool:
        states = self._start
        for ch in text:
            states = self._step(states, ch)
            if not states:
                return False
        return self._accept in states

    def _step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        key = (states, ch)
        stepped = self._steps.get(key)
        if stepped is None:
            moved = set()
            for index in states:
                if index == self._accept:
                    continue
                node = self._nodes[index]
                if node.kind == _ONE and node.accepts(ch):
                    moved.add(index + 1)
                elif node.kind == _LOOP and node.accepts(ch):
                    moved.add(index)
            stepped = self._closure(moved, at_start=False)
            if len(self._steps) >= _STEP_CACHE_SIZE:
                self._steps.clear()
            self._steps[key] = stepped
        return stepped

    def _closure(self, states: set[int], *, at_start: bool) -> frozenset[int]:
        """The states reachable without consuming a character."""
        seen = set(states)
        pending = list(states)
        while pending:
            index = pending.pop()
            if index == self._accept:
                continue
            node = self._nodes[index]
            following: tuple[int, ...] = ()
            if node.kind == _LOOP or (node.kind == _AT_START and at_start):
                following = (index + 1,)
            elif node.kind == _SKIP:
                following = (index + 1, node.target)
            for nxt in following:
                if nxt not in seen:
                    seen.add(nxt)
                    pending.append(nxt)
        return frozenset(seen)


def _translate(text: str) -> tuple[list[_Node], str]:
    """The pattern as automaton nodes, and its moby match type.

    Node for node, this is moby's translation to a Go regular expression: ``*`` is
    ``[^/]*``, ``?`` is ``[^/]``, a trailing ``**`` is ``.*``, an inner ``**`` (``**/``) is
    ``(.*/)?``, ``^`` outside a class anchors at the start; everything else is literal.
    """
    nodes: list[_Node] = []
    kind = "exact"
    pos = 0
    while pos < len(text):
        at_start = pos == 0
        ch = text[pos]
        pos += 1
        if ch == "*" and text[pos : pos + 1] == "*":
            pos += 1
            # `**/` is read as `**`.
            if text[pos : pos + 1] == _SEP:
                pos += 1
            if pos == len(text):
                # A trailing `**` accepts everything, as in .gitignore.
                if kind == "exact":
                    kind = "prefix"
                else:
                    nodes.append(_Node(_LOOP, _not_newline))
                    kind = "regex"
            else:
                # Any number of directories, including none.
                after = len(nodes) + 3
                nodes += [
                    _Node(_SKIP, target=after),
                    _Node(_LOOP, _not_newline),
                    _Node(_ONE, _is_sep),
                ]
                kind = "regex"
            if at_start:
                kind = "suffix"
        elif ch == "*":
            nodes.append(_Node(_LOOP, _not_sep))
            kind = "regex"
        elif ch == "?":
            nodes.append(_Node(_ONE, _not_sep))
            kind = "regex"
        elif ch == "\\":
            if pos == len(text):
                raise ContextError(f"bad pattern {text!r}: trailing backslash", hint=_FIX_HINT)
            nodes.append(_Node(_ONE, _literal(text[pos])))
            pos += 1
            kind = "regex"
        elif ch == "[":
            accepts, pos = _translate_class(text, pos)
            nodes.append(_Node(_ONE, accepts))
            kind = "regex"
        elif ch == "]":
            nodes.append(_Node(_ONE, _literal(ch)))
            kind = "regex"
        elif ch == "^":
            nodes.append(_Node(_AT_START))
        else:
            nodes.append(_Node(_ONE, _literal(ch)))
    return nodes, kind


def _translate_class(text: str, pos: int) -> tuple[Callable[[str], bool], int]:
    """A ``[...]`` class starting after its ``[``, validated by Go's filepath.Match rules."""
    negate = text[pos : pos + 1] == "^"
    if negate:
        pos += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if pos < len(text) and text[pos] == "]" and ranges:
            return _class_test(tuple(ranges), negate), pos + 1
        lo, pos = _class_char(text, pos)
        hi = lo
        if text[pos : pos + 1] == "-":
            hi, pos = _class_char(text, pos + 1)
            if hi < lo:
                raise ContextError(f"bad pattern {text!r}: range {lo}-{hi}", hint=_FIX_HINT)
        ranges.append((lo, hi))


def _class_test(ranges: tuple[tuple[str, str], ...], negate: bool) -> Callable[[str], bool]:
    def accepts(ch: str) -> bool:
        return any(lo <= ch <= hi for lo, hi in ranges) != negate

    return accepts


def _class_char(text: str, pos: int) -> tuple[str, int]:
    """One possibly escaped character of a class; Go rejects a bare ``-`` or ``]`` here."""
    if pos >= len(text):
        raise ContextError(f"bad pattern {text!r}: unterminated [", hint=_FIX_HINT)
    ch = text[pos]
    if ch in "-]":
        raise ContextError(f"bad pattern {text!r}: unexpected {ch!r} in [...]", hint=_FIX_HINT)
    if ch == "\\":
        if pos + 1 >= len(text):
            raise ContextError(f"bad pattern {text!r}: unterminated [", hint=_FIX_HINT)
        return text[pos + 1], pos + 2
    return ch, pos + 1
