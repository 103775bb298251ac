"""A Dockerfile parser that cuts instructions exactly where BuildKit's parser does.

Users write Dockerfiles for ``docker build``, so kiln must see the same instructions Docker sees:
the same boundaries, keywords, flags and line numbers. This module follows BuildKit's
``frontend/dockerfile/parser`` rule for rule (it is checked against that parser, through the
``dockerfile`` package, in ``tests/plan/test_oracle.py``):

- parser directives (``# escape=``, ``# syntax=``, ``# check=``) are read only from the leading
  comment block; the escape character (``\\`` or a backtick) drives line continuation;
- a continuation keeps going across comment lines and blank lines (BuildKit warns about the
  blank ones but does not end the instruction);
- heredocs (``RUN <<EOF`` ... ``EOF``) on RUN, COPY and ADD (also under ONBUILD) are bodies
  attached to their instruction, never instructions of their own;
- leading ``--flag`` words are split off every instruction; JSON-form arguments are recognised.

Where BuildKit rejects a file at parse time (bad escape directive, repeated directive,
unterminated heredoc, JSON array of non-strings, malformed ENV/LABEL), kiln raises
:class:`~kiln.errors.DockerfileError` with the line number. Nothing else is raised for any text.

The test oracle vendors an older BuildKit parser than today's ``docker build``; where they differ,
kiln follows today's: ``# check=`` is a directive (it does not end the directive block), and exec
form needs the whole argument to be one JSON array (trailing text makes it shell form).
Like BuildKit, flags are scanned byte by byte, so non-ASCII text inside a flag comes out as
BuildKit returns it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import attrs

from kiln.errors import DockerfileError

DEFAULT_ESCAPE = "\\"
ALTERNATE_ESCAPE = "`"
# BuildKit recognises only these directive names; any other comment ends the directive block.
DIRECTIVE_NAMES = frozenset({"escape", "syntax", "check"})
HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
# Exec-form instructions: a leading `[` that parses as JSON makes the arguments a list.
JSON_KEYWORDS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL"})
JSON_OR_LIST_KEYWORDS = frozenset({"ADD", "COPY", "VOLUME"})
NAME_VALUE_KEYWORDS = frozenset({"ENV", "LABEL"})

_UTF8_BOM = "\ufeff"
# BuildKit reads lines with a bufio.Scanner, whose 64 KiB buffer must hold a whole line and its
# newline: the longest line it accepts, newline not counted, is one byte less.
MAX_LINE_BYTES = 64 * 1024 - 1
# Go's unicode.IsSpace; Python's str.isspace also accepts \x1c-\x1f, which Go does not.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE_CHARS = "".join(sorted(_GO_SPACE))
# BuildKit's keyword separator is ASCII-only (no newline: lines are already split).
_WORD_SEPARATOR = re.compile(r"[\t\v\f\r ]+")
_DIRECTIVE = re.compile(
    r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*"
)
_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)([^<]*)", re.DOTALL)
_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


@attrs.frozen
class Heredoc:
    """A heredoc body attached to an instruction (``<<EOF`` ... ``EOF``)."""

    name: str
    content: str
    file_descriptor: int = 0
    chomp: bool = False  # `<<-`: leading tabs are stripped from the terminator line
    expand: bool = True  # a quoted name (`<<'EOF'`) turns variable expansion off


@attrs.frozen
class Instruction:
    """One logical Dockerfile instruction.

    ``keyword`` is upper-cased; ``flags`` are the leading ``--name[=value]`` words as BuildKit
    returns them (quotes removed); ``args`` is the rest, trimmed; ``line``/``end_line`` are the
    first and last physical lines (1-based, heredoc bodies included); ``json_args`` is set for
    exec (JSON) form; ``sub_keyword`` is the wrapped instruction of an ONBUILD.
    """

    keyword: str
    flags: tuple[str, ...]
    args: str
    line: int
    end_line: int
    original: str
    heredocs: tuple[Heredoc, ...] = ()
    json_args: tuple[str, ...] | None = None
    sub_keyword: str | None = None

    @property
    def words(self) -> tuple[str, ...]:
        """The arguments split on whitespace, as BuildKit splits FROM and EXPOSE."""
        return tuple(word for word in _WORD_SEPARATOR.split(self.args) if word)


@attrs.frozen
class Dockerfile:
    """A parsed Dockerfile: its instructions, parser directives, and escape character."""

    instructions: tuple[Instruction, ...]
    directives: tuple[tuple[str, str], ...] = ()
    escape: str = DEFAULT_ESCAPE

    def directive(self, name: str) -> str | None:
        """The value of parser directive `name` (lower-case), if present."""
        return dict(self.directives).get(name)


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse `text` the way BuildKit does; raises DockerfileError where BuildKit would fail."""
    return _Parser(text).parse()


@attrs.define
class _Parser:
    text: str
    lines: list[str] = attrs.field(init=False)
    index: int = 0
    escape: str = DEFAULT_ESCAPE
    continuation: re.Pattern[str] = attrs.field(init=False)
    directives: list[tuple[str, str]] = attrs.Factory(list)
    directives_done: bool = False

    def __attrs_post_init__(self) -> None:
        self.lines = _physical_lines(self.text.removeprefix(_UTF8_BOM))
        self.continuation = _continuation_pattern(self.escape)
        _check_line_lengths(self.lines)

    def parse(self) -> Dockerfile:
        instructions = list(self._instructions())
        return Dockerfile(tuple(instructions), tuple(self.directives), self.escape)

    def _next_line(self) -> str | None:
        if self.index >= len(self.lines):
            return None
        self.index += 1
        return self.lines[self.index - 1]

    def _instructions(self) -> Iterator[Instruction]:
        while (raw := self._next_line()) is not None:
            token = _trim_newline(raw).lstrip(_GO_SPACE_CHARS)
            self._directive(token)
            start = self.index
            line, ended = self._trim_continuation(_trim_comment(token))
            if ended and not line:
                continue
            if not ended:
                line = self._join_continuation(line)
            yield self._instruction(line, start)

    def _directive(self, token: str) -> None:
        if self.directives_done:
            return
        match = _DIRECTIVE.fullmatch(token)
        name = match.group(1).lower() if match else ""
        if match is None or name not in DIRECTIVE_NAMES:
            self.directives_done = True
            return
        if name in dict(self.directives):
            raise DockerfileError(
                self.index,
                f"only one {name} parser directive can be used",
                hint="remove the repeated directive from the top of the Dockerfile",
            )
        value = match.group(2)
        if name == "escape":
            self._set_escape(value)
        self.directives.append((name, value))

    def _set_escape(self, value: str) -> None:
        if value not in (DEFAULT_ESCAPE, ALTERNATE_ESCAPE):
            raise DockerfileError(
                self.index,
                f"invalid escape token '{value}' does not match ` or \\",
                hint="use `# escape=\\` or `# escape=``",
            )
        self.escape = value
        self.continuation = _continuation_pattern(value)

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        if self.continuation.search(line):
            return self.continuation.sub(r"\1", line), False
        return line, True

    def _join_continuation(self, line: str) -> str:
        ended = False
        while not ended and (raw := self._next_line()) is not None:
            piece = _trim_newline(raw)
            if _is_comment(raw) or not piece.lstrip(_GO_SPACE_CHARS):
                continue
            piece, ended = self._trim_continuation(_trim_comment(piece))
            line += piece
        return line

    def _instruction(self, line: str, start: int) -> Instruction:
        try:
            node = _node(line, self.escape)
        except ValueError as error:
            raise DockerfileError(start, str(error), hint=_hint_for(str(error))) from None
        heredocs: tuple[Heredoc, ...] = ()
        if node.can_contain_heredoc:
            heredocs = tuple(self._heredoc_body(doc, start) for doc in _heredocs_in(line, start))
        return Instruction(
            keyword=node.keyword,
            flags=node.flags,
            args=node.args,
            line=start,
            end_line=self.index,
            original=line,
            heredocs=heredocs,
            json_args=node.json_args,
            sub_keyword=node.sub_keyword,
        )

    def _heredoc_body(self, doc: Heredoc, start: int) -> Heredoc:
        content: list[str] = []
        while (raw := self._next_line()) is not None:
            candidate = _trim_newline(raw)
            if doc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == doc.name:
                return attrs.evolve(doc, content="".join(content))
            content.append(raw)
        raise DockerfileError(
            start,
            "unterminated heredoc",
            hint=f"end the heredoc with a line containing only {doc.name!r}",
        )


@attrs.frozen
class _Node:
    """What BuildKit's line parser makes of one logical line."""

    keyword: str
    flags: tuple[str, ...]
    args: str
    json_args: tuple[str, ...] | None
    sub_keyword: str | None
    can_contain_heredoc: bool


def _node(line: str, escape: str) -> _Node:
    """Split a logical line into keyword, flags and arguments; ValueError where BuildKit errs.

    ONBUILD wraps another instruction (which may be ONBUILD again); every level is checked, and
    the wrapped instruction decides whether heredocs may follow.
    """
    levels = [_level(line, escape)]
    while levels[-1].keyword == "ONBUILD" and levels[-1].args:
        levels.append(_level(levels[-1].args, escape))
    top = levels[0]
    sub = levels[1] if len(levels) > 1 else None
    heredoc_level = sub or top
    return _Node(
        keyword=top.keyword,
        flags=top.flags,
        args=top.args,
        json_args=top.json_args,
        sub_keyword=sub.keyword if sub else None,
        can_contain_heredoc=heredoc_level.keyword in HEREDOC_KEYWORDS
        and heredoc_level.json_args is None,
    )


@attrs.frozen
class _Level:
    keyword: str
    flags: tuple[str, ...]
    args: str
    json_args: tuple[str, ...] | None


def _level(line: str, escape: str) -> _Level:
    parts = _WORD_SEPARATOR.split(line.strip(_GO_SPACE_CHARS), maxsplit=1)
    keyword = _ascii_upper(parts[0])
    args, flags = _extract_flags(parts[1]) if len(parts) == 2 else ("", ())
    args = args.strip(_GO_SPACE_CHARS)
    return _Level(keyword, flags, args, _check_arguments(keyword, args, escape))


def _check_arguments(keyword: str, args: str, escape: str) -> tuple[str, ...] | None:
    """Apply the per-keyword argument checks BuildKit's parser makes; return JSON-form args."""
    if keyword in JSON_KEYWORDS and args:
        return _maybe_json(args)
    if keyword in JSON_OR_LIST_KEYWORDS:
        return _maybe_json(args)
    if keyword == "HEALTHCHECK":
        return _healthcheck_json(args)
    if keyword in NAME_VALUE_KEYWORDS:
        _check_name_values(keyword, args, escape)
    return None


def _maybe_json(args: str) -> tuple[str, ...] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # Go's decoder also gives up on very deep nesting
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise ValueError(_NOT_STRING_ARRAY)
    return tuple(value)


def _reject_constant(name: str) -> object:
    # Go's JSON decoder has no NaN/Infinity, so such text is shell form there too.
    raise ValueError(f"not JSON: {name}")


def _healthcheck_json(args: str) -> tuple[str, ...] | None:
    """HEALTHCHECK <type> [command]: the command may be exec form, reported after the type."""
    view = _byte_view(args)
    sep = next((i for i, ch in enumerate(view) if ch in _GO_SPACE), len(view))
    if sep == 0:
        return None
    command = _maybe_json(_from_byte_view(view[sep:].lstrip(_GO_SPACE_CHARS)))
    return None if command is None else (_from_byte_view(view[:sep]), *command)


def _check_name_values(keyword: str, args: str, escape: str) -> None:
    """ENV/LABEL: either `KEY value` or `KEY=value ...`, as BuildKit's parseNameVal."""
    words = _parse_words(args, escape)
    if not words:
        return
    if "=" not in words[0]:
        if len(_WORD_SEPARATOR.split(args, maxsplit=1)) < 2:
            raise ValueError(f"{keyword} must have two arguments")
        return
    for word in words:
        if "=" not in word:
            raise ValueError(
                f'Syntax error - can\'t find = in "{word}". Must be of the form: name=value'
            )


def _hint_for(message: str) -> str:
    if message == _NOT_STRING_ARRAY:
        return 'write exec form as a JSON list of strings, e.g. ["sh", "-c", "echo hi"]'
    return "write it as KEY=value (quote values that contain spaces)"


def _extract_flags(text: str) -> tuple[str, tuple[str, ...]]:
    """Split leading ``--flag`` words off `text`, exactly as BuildKit's extractBuilderFlags.

    BuildKit walks the line byte by byte and treats each byte as a character, so it is run here
    on the Latin-1 view of the UTF-8 bytes: flags come out as BuildKit returns them, and the
    remainder is mapped back to text.
    """
    view = _byte_view(text)
    words: list[str] = []
    pos = 0
    while True:
        while pos < len(view) and view[pos] in _GO_SPACE:
            pos += 1
        if pos == len(view):
            return "", tuple(words)
        if not view.startswith("--", pos):
            return _from_byte_view(view[pos:]), tuple(words)
        word, blank_ok, pos = _flag_word(view, pos)
        if word == "--":
            return _from_byte_view(view[pos:]), tuple(words)
        if blank_ok or word:
            words.append(word)


def _flag_word(view: str, pos: int) -> tuple[str, bool, int]:
    """Read one flag word from `pos`; return it, whether it was quoted, and the next position."""
    chars: list[str] = []
    quote = ""
    blank_ok = False
    while pos < len(view):
        ch = view[pos]
        pos += 1
        if not quote and ch in _GO_SPACE:
            break
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
            continue
        if quote and ch == quote:
            quote = ""
            continue
        if ch == "\\":
            if pos == len(view):
                continue
            ch = view[pos]
            pos += 1
        chars.append(ch)
    return "".join(chars), blank_ok, pos


def _parse_words(text: str, escape: str) -> list[str]:
    """BuildKit's parseWords: whitespace-separated words, quotes kept, escapes honoured."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    in_word = blank_ok = False
    pos = 0
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if not in_word and not quote:
            if ch in _GO_SPACE:
                continue
            in_word = True
        if not quote and ch in _GO_SPACE:
            if blank_ok or word:
                words.append("".join(word))
            word, in_word, blank_ok = [], False, False
            continue
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif quote and ch == quote:
            quote = ""
            word.append(ch)
            continue
        if ch == escape and quote != "'":
            if pos == len(text):
                continue
            word.append(ch)
            ch = text[pos]
            pos += 1
        word.append(ch)
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def quoted_words(text: str, escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Words as BuildKit's parseWords splits ARG/ENV/LABEL arguments: quotes kept, escapes
    honoured, whitespace inside quotes not a separator."""
    return _parse_words(text, escape)


def split_words(text: str) -> list[str] | None:
    """Shell-style words with quotes and escapes removed; None for an unterminated quote."""
    return _shell_words(text, raw=False)


def _heredocs_in(line: str, line_number: int) -> Iterator[Heredoc]:
    """The heredocs a logical line opens, in order (BuildKit's heredocsFromLine)."""
    for word in _shell_words(line, raw=True) or ():
        match = _HEREDOC_WORD.fullmatch(word)
        if match is None or not match.group(3):
            continue
        doc = _heredoc_from_match(match, line_number)
        if doc is not None:
            yield doc


def _heredoc_from_match(match: re.Match[str], line_number: int) -> Heredoc | None:
    rest = match.group(3)
    words = _shell_words(rest, raw=False)
    if words is None:
        raise DockerfileError(
            line_number,
            f"unterminated quote in heredoc name {rest!r}",
            hint="close the quote around the heredoc name",
        )
    if len(words) != 1:
        return None
    raw_word = (_shell_words(rest, raw=True) or [""])[0]
    name = words[0]
    quotes = name.count("'") + name.count('"')
    raw_quotes = raw_word.count("'") + raw_word.count('"')
    return Heredoc(
        name=name,
        content="",
        file_descriptor=int(match.group(1) or 0),
        chomp=match.group(2) == "-",
        expand=quotes == raw_quotes,
    )


def _shell_words(text: str, *, raw: bool) -> list[str] | None:
    """Split like BuildKit's shell lexer with unset variables kept literally.

    With `raw`, quotes and escapes stay in the words (used to find `<<WORD` tokens); without,
    they are removed (used to read the heredoc name). None means an unterminated quote.
    """
    words: list[str] = []
    word: list[str] = []
    started = False
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch in _GO_SPACE:
            if started:
                words.append("".join(word))
            word, started, pos = [], False, pos + 1
            continue
        started = True
        if ch in "'\"":
            end = _closing_quote(text, pos)
            if end is None:
                return None
            body = text[pos : end + 1]
            word.append(body if raw else _unquote(body))
            pos = end + 1
        elif ch == "\\":
            escaped = text[pos : pos + 2]
            word.append(escaped if raw else escaped[1:])
            pos += 2
        else:
            word.append(ch)
            pos += 1
    if started:
        words.append("".join(word))
    return words


def _closing_quote(text: str, start: int) -> int | None:
    quote = text[start]
    pos = start + 1
    while pos < len(text):
        if text[pos] == "\\" and quote == '"':
            pos += 2
            continue
        if text[pos] == quote:
            return pos
        pos += 1
    return None


def _unquote(body: str) -> str:
    inner = body[1:-1]
    if body[0] == "'":
        return inner
    return re.sub(r'\\(["$\\])', r"\1", inner)


def _continuation_pattern(escape: str) -> re.Pattern[str]:
    # The escape character ends a line (optionally followed by blanks) unless it is escaped
    # itself; a line holding only the escape character also continues.
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z", re.DOTALL)


def _physical_lines(text: str) -> list[str]:
    """Lines with their endings kept (heredoc bodies are verbatim); only `\\n` separates."""
    lines = text.split("\n")
    with_ends = [line + "\n" for line in lines[:-1]]
    return with_ends + ([lines[-1]] if lines[-1] else [])


def _check_line_lengths(lines: list[str]) -> None:
    for number, line in enumerate(lines, start=1):
        content = line.removesuffix("\n")
        # A UTF-8 character is at most 4 bytes, so only long lines need encoding to be measured.
        if len(content) * 4 <= MAX_LINE_BYTES:
            continue
        if len(content.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
            raise DockerfileError(
                number,
                f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}",
                hint="split the line with line continuations, or move the data into a file",
            )


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _trim_comment(token: str) -> str:
    return "" if token.startswith("#") else token


def _is_comment(raw: str) -> bool:
    return _trim_newline(raw).lstrip(_GO_SPACE_CHARS).startswith("#")


def _ascii_upper(word: str) -> str:
    return "".join(ch.upper() if ch.isascii() else ch for ch in word)


def _byte_view(text: str) -> str:
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def _from_byte_view(view: str) -> str:
    return view.encode("latin-1").decode("utf-8", "replace")
