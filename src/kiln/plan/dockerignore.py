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
import re
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
# What a single `*` or `?` may match: anything but the separator (Go's filepath.Match rule).
_NOT_SEP = "[^/]"
# Characters that make a pattern a glob. An exception without any of them names a fixed path,
# which lets the walker skip an excluded directory unless that path lies beneath it.
_GLOB_CHARS = frozenset("*?[\\")
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
        return any(ch in _GLOB_CHARS for ch in self.text)


class PatternMatcher:
    """Decides which context paths a list of `.dockerignore` patterns excludes.

    Mirrors moby's ``PatternMatcher.MatchesOrParentMatches``: patterns are applied in order, a
    plain pattern excludes a path when it matches the path or one of its parent directories, and
    an ``!`` pattern re-includes it the same way.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._patterns = [p for p in map(_compile, patterns) if p is not None]
        self._exceptions = [p for p in self._patterns if p.exclusion]
        self._glob_exception = any(p.has_glob for p in self._exceptions)

    def matches(self, rel_posix_path: str) -> bool:
        """True when the path (slash-separated, relative to the context) is excluded."""
        parents = _parents(rel_posix_path)
        excluded = False
        for pattern in self._patterns:
            # An exclusion can only flip an excluded path back, a plain pattern only the reverse.
            if pattern.exclusion != excluded:
                continue
            if pattern.test(rel_posix_path) or any(map(pattern.test, parents)):
                excluded = not pattern.exclusion
        return excluded

    def may_include_beneath(self, rel_dir: str) -> bool:
        """Whether an ``!`` pattern could re-include something below an excluded directory.

        When this is False the walker may skip the directory, as Docker does. A glob exception
        could match anywhere, so it keeps every excluded directory walked (BuildKit does the
        same); a fixed exception only keeps the directories on its own path.
        """
        if self._glob_exception:
            return True
        prefix = rel_dir + _SEP
        return any((p.text + _SEP).startswith(prefix) for p in self._exceptions)


def _parents(path: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b"]``."""
    parts = path.split(_SEP)[:-1]
    return [_SEP.join(parts[: i + 1]) for i in range(len(parts))]


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
    """moby's match types: exact, ``foo**`` prefix, ``**foo`` suffix, else a regular expression.

    The prefix and suffix shortcuts are not equivalent to the regular expression (``**foo``
    matches ``barfoo``); they are kept because they are what Docker does.
    """
    regex, kind = _translate(text)
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
    compiled = re.compile(regex, re.DOTALL)
    return lambda path: compiled.fullmatch(path) is not None


def _translate(text: str) -> tuple[str, str]:
    """The pattern as a Python regular expression, and its moby match type."""
    out: list[str] = []
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
                    out.append(".*")
                    kind = "regex"
            else:
                # Any number of directories, including none.
                out.append("(?:.*/)?")
                kind = "regex"
            if at_start:
                kind = "suffix"
        elif ch == "*":
            out.append(_NOT_SEP + "*")
            kind = "regex"
        elif ch == "?":
            out.append(_NOT_SEP)
            kind = "regex"
        elif ch == "\\":
            if pos == len(text):
                raise ContextError(f"bad pattern {text!r}: trailing backslash", hint=_FIX_HINT)
            out.append(re.escape(text[pos]))
            pos += 1
            kind = "regex"
        elif ch == "[":
            cls, pos = _translate_class(text, pos)
            out.append(cls)
            kind = "regex"
        elif ch == "]":
            out.append(re.escape(ch))
            kind = "regex"
        else:
            out.append(re.escape(ch))
    return "".join(out), kind


def _translate_class(text: str, pos: int) -> tuple[str, int]:
    """A ``[...]`` class starting after its ``[``, validated by Go's filepath.Match rules."""
    negate = text[pos : pos + 1] == "^"
    if negate:
        pos += 1
    items: list[str] = []
    while True:
        if pos < len(text) and text[pos] == "]" and items:
            return "[" + ("^" if negate else "") + "".join(items) + "]", pos + 1
        lo, pos = _class_char(text, pos)
        if text[pos : pos + 1] == "-":
            hi, pos = _class_char(text, pos + 1)
            if hi < lo:
                raise ContextError(f"bad pattern {text!r}: range {lo}-{hi}", hint=_FIX_HINT)
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
        else:
            items.append(re.escape(lo))


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
