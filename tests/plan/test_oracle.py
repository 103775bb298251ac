"""Differential tests: kiln's parser against BuildKit's own (the `dockerfile` package).

The oracle is a test-only dependency; kiln's runtime parser is pure Python. Both must agree on
instruction boundaries, keywords, flags, line numbers, heredoc bodies and JSON forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dockerfile as buildkit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import DockerfileError
from kiln.plan import Instruction, parse_dockerfile
from kiln.testing.strategies import dockerfiles
from support.paths import EXAMPLES

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.Dockerfile"))
EXAMPLE_DOCKERFILES = sorted(EXAMPLES.glob("*/Dockerfile"))
MIN_CORPUS_SIZE = 40


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _upper(keyword: str | None) -> str:
    # BuildKit matches keywords case-insensitively; kiln upper-cases ASCII letters only.
    return "".join(ch.upper() if ch.isascii() else ch for ch in keyword or "")


def _oracle_view(command: Any) -> tuple[Any, ...]:
    return (
        _upper(command.cmd),
        _upper(command.sub_cmd) if command.sub_cmd else None,
        tuple(command.flags),
        command.start_line,
        command.end_line,
        tuple((doc.name, doc.content, doc.file_descriptor) for doc in command.heredocs),
        tuple(command.value) if command.json else None,
        tuple(command.value) if _upper(command.cmd) == "FROM" else None,
    )


def _kiln_view(instruction: Instruction) -> tuple[Any, ...]:
    # The oracle's Python wrapper does not surface heredocs under ONBUILD (it still consumes
    # their lines, which end_line checks).
    heredocs = () if instruction.keyword == "ONBUILD" else instruction.heredocs
    return (
        instruction.keyword,
        instruction.sub_keyword,
        instruction.flags,
        instruction.line,
        instruction.end_line,
        tuple((doc.name, doc.content, doc.file_descriptor) for doc in heredocs),
        instruction.json_args,
        instruction.words if instruction.keyword == "FROM" else None,
    )


def _assert_agree(text: str) -> None:
    expected = [_oracle_view(command) for command in buildkit.parse_string(text)]
    actual = [_kiln_view(i) for i in parse_dockerfile(text).instructions]
    assert actual == expected


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= MIN_CORPUS_SIZE


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_corpus_file_parses_like_buildkit(path: Path) -> None:
    _assert_agree(_read(path))


@pytest.mark.parametrize(
    "path", EXAMPLE_DOCKERFILES, ids=[path.parent.name for path in EXAMPLE_DOCKERFILES]
)
def test_example_parses_like_buildkit(path: Path) -> None:
    _assert_agree(_read(path))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dockerfiles())
def test_generated_dockerfiles_parse_like_buildkit(text: str) -> None:
    _assert_agree(text)


# Fragments that stress the parser's corners: keywords, escapes, comments, heredoc markers,
# quotes, JSON, flags, odd whitespace and non-ASCII bytes inside flags.
TOKENS = (
    *("FROM", "RUN", "COPY", "ADD", "CMD", "SHELL", "VOLUME", "onbuild", "ENV", "LABEL"),
    *("HEALTHCHECK", " ", "  ", "\t", "\x0b", "\xa0", "é", "\\", "\\\\", "`", "#", "\t#"),
    *("# escape=`", "# syntax=x", "<<", "<<-", "0<<", "EOF", "'EOF'", '<<E"O"F', '"', "'"),
    *("[", "]", '"a"', "1", "NaN", "=", "a", ";", "--from=x", "--mount=a", "--", " --", "$X"),
    *("\n", "\n", "\n", "\r\n"),
)


def _outcome(parse: Any, error: type[Exception], view: Any, text: str) -> Any:
    try:
        return [view(item) for item in parse(text)]
    except error:
        return "rejected"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_token_soup_parses_like_buildkit(text: str) -> None:
    expected = _outcome(buildkit.parse_string, buildkit.GoParseError, _oracle_view, text)
    actual = _outcome(lambda t: parse_dockerfile(t).instructions, DockerfileError, _kiln_view, text)
    if expected == "rejected" and actual == []:
        return  # BuildKit rejects a file with no instructions; kiln's planner does the same
    assert actual == expected


EDGE_CASES = [
    "FROM a\nRUN echo \\\n\n  b\n",
    "FROM a\nRUN x \\\n   \n   \nRUN y\n",
    "FROM a\n\\\nRUN y\n",
    "FROM a\nRUN x\t\\ \t\nRUN y\n",
    "FROM a\nRUN x\\\\\nRUN y\n",
    "FROM a\nRUN x \\\n",
    "#   ESCAPE  =  `  \nFROM a\nRUN x `\n y\n",
    "\n# escape=`\nFROM a\nRUN x `\n y\n",
    "# foo=bar\n# escape=`\nFROM a\nRUN x `\n y\n",
    "FROM a\n# escape=`\nRUN a `\nb\n",
    "FROM a\nRUN <<$X\nx\n$X\n",
    'FROM a\nRUN <<E"O"F\nx\nEOF\n',
    "FROM a\nRUN <<EOF\r\nx\r\nEOF\r\n",
    'FROM a\nRUN ["sh", "-c", "<<EOF"]\n',
    'FROM a\nRUN echo "<<EOF"\n',
    "FROM a\nRUN echo '<<EOF\n",
    "FROM a\nRUN <<EOF <<EOF\nx\nEOF\ny\nEOF\n",
    "FROM a\nRUN <<EOF cat\nEOF\n",
    "FROM a\nRUN cat <<EOF | sh \\\n && echo\nhi\nEOF\n",
    'FROM a\nCOPY --from="a b" x y\n',
    "FROM a\nCOPY -- --from=x y\n",
    "FROM a\nCOPY --from=a\\ b x y\n",
    "FROM a\nCOPY ---x y\n",
    "FROM a\nRUN --x='' b\n",
    "FROM a\nRUN --x=\\\n",
    "FROM a\nRUN --mount=é x\n",
    "FROM a\x0bb\n",
    "FROM a\nONBUILD ONBUILD RUN x\n",
    "FROM a\nonbuild run <<EOF\nhi\nEOF\n",
    "FROM a\nHEALTHCHECK NONE extra\n",
    'FROM a\nRUN ["a", "b"\n',
    "FROM a\nRUN [NaN]\n",
    "FROM a\nENV =b\n",
    "\ufeffFROM a\n",
    'FROM a\nCOPY ["a", "b"]\nCOPY []\n',
    "FROM a\nRUN " + "[" * 5000 + "\n",
    "FROM a\nRUN " + "x" * 65531 + "\n",
    "FROM a\nRUN " + "x" * 65531,
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_case_parses_like_buildkit(text: str) -> None:
    _assert_agree(text)


# Where the oracle's vendored parser is older than the BuildKit in today's `docker build`, kiln
# follows today's BuildKit. These tests pin both sides of each difference.


def test_exec_form_with_trailing_text_is_shell_form_as_in_current_buildkit() -> None:
    text = 'FROM a\nRUN ["echo", "hi"] extra\n'
    assert buildkit.parse_string(text)[1].json  # old decoder reads only the leading value
    assert parse_dockerfile(text).instructions[1].json_args is None  # strict, as today


def test_check_directive_keeps_the_directive_block_open_as_in_current_buildkit() -> None:
    text = "# check=skip=all\n# escape=`\nFROM a\nRUN x `\n y\n"
    assert [c.cmd for c in buildkit.parse_string(text)] == ["FROM", "RUN", "y"]
    parsed = parse_dockerfile(text)
    assert parsed.escape == "`"
    assert [i.original for i in parsed.instructions] == ["FROM a", "RUN x  y"]


REJECTED = [
    "# escape=x\nFROM a\n",
    "# escape=\\\n# escape=`\nFROM a\n",
    "# syntax=a\n# Syntax=b\nFROM a\n",
    "FROM a\nRUN <<EOF\nx\n",
    'FROM a\nRUN ["a", 1]\n',
    "FROM a\nCMD [1]\n",
    "FROM a\nVOLUME [true]\n",
    "FROM a\nHEALTHCHECK CMD [1]\n",
    "FROM a\nONBUILD RUN [1]\n",
    "FROM a\nENV X\n",
    "FROM a\nENV a=b c\n",
    "FROM a\nLABEL x\n",
    "FROM a\nRUN " + "x" * 65532 + "\n",
    "FROM a\nRUN " + "x" * 65532,
    "FROM a\nRUN " + "é" * 40000 + "\n",
]


@pytest.mark.parametrize("text", REJECTED)
def test_both_parsers_reject(text: str) -> None:
    with pytest.raises(buildkit.GoParseError):
        buildkit.parse_string(text)
    with pytest.raises(DockerfileError):
        parse_dockerfile(text)
