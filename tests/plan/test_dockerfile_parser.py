"""kiln's Dockerfile parser: logical lines, directives, heredocs, flags, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import DockerfileError
from kiln.plan import parse_dockerfile
from kiln.testing.strategies import dockerfiles


def _lines(text: str) -> list[tuple[int, str]]:
    return [(i.line, i.original) for i in parse_dockerfile(text).instructions]


def test_continuation_is_one_instruction_at_its_first_line() -> None:
    # continuation lines are joined (docs/protocol.md#plan), with BuildKit's joining (the escape and
    # newline are removed, spacing kept).
    text = "FROM ubuntu\nRUN echo one \\\n  && echo two\n"
    assert _lines(text) == [(1, "FROM ubuntu"), (2, "RUN echo one   && echo two")]
    run = parse_dockerfile(text).instructions[1]
    assert (run.keyword, run.args, run.end_line) == ("RUN", "echo one   && echo two", 3)


def test_comment_and_blank_lines_do_not_end_a_continuation() -> None:
    # The official client's line splitter would split this; Docker does not (docs/protocol.md#plan).
    text = "FROM a\nRUN apt-get update \\\n    # why\n\n    && apt-get install -y git\nUSER x\n"
    assert _lines(text) == [
        (1, "FROM a"),
        (2, "RUN apt-get update     && apt-get install -y git"),
        (6, "USER x"),
    ]


def test_blank_and_comment_lines_between_instructions_are_skipped() -> None:
    assert _lines("\n# c\n  # indented\nFROM a\n\n\nRUN b\n") == [(4, "FROM a"), (7, "RUN b")]


def test_keyword_is_upper_cased_and_args_trimmed() -> None:
    (instruction,) = parse_dockerfile("  from   alpine   AS   b   \n").instructions
    assert instruction.keyword == "FROM"
    assert instruction.args == "alpine   AS   b"
    assert instruction.words == ("alpine", "AS", "b")


def test_heredoc_body_is_not_parsed_as_instructions() -> None:
    text = "FROM a\nRUN <<EOF\nFROM evil\nCOPY --from=x / /\nEOF\nUSER me\n"
    parsed = parse_dockerfile(text).instructions
    assert [i.keyword for i in parsed] == ["FROM", "RUN", "USER"]
    run = parsed[1]
    assert (run.line, run.end_line) == (2, 5)
    assert run.heredocs[0].name == "EOF"
    assert run.heredocs[0].content == "FROM evil\nCOPY --from=x / /\n"
    assert parsed[2].line == 6


def test_heredoc_attributes() -> None:
    text = "FROM a\nCOPY <<-'A' 3<<B /dst\n\tx\n\tA\ny\nB\n"
    first, second = parse_dockerfile(text).instructions[1].heredocs
    assert (first.name, first.chomp, first.expand, first.content) == ("A", True, False, "\tx\n")
    assert (second.name, second.file_descriptor, second.expand) == ("B", 3, True)


def test_heredocs_only_on_run_copy_add_and_not_in_exec_form() -> None:
    text = 'FROM a\nCMD cat <<EOF\nRUN ["cat", "<<EOF"]\n'
    assert [i.keyword for i in parse_dockerfile(text).instructions] == ["FROM", "CMD", "RUN"]


def test_escape_directive_changes_the_continuation_character() -> None:
    text = "# escape=`\nFROM a\nRUN dir C:\\ `\n  /s\n"
    parsed = parse_dockerfile(text)
    assert parsed.escape == "`"
    assert parsed.directive("escape") == "`"
    assert [(i.line, i.original) for i in parsed.instructions] == [
        (2, "FROM a"),
        (3, "RUN dir C:\\   /s"),
    ]


def test_syntax_directive_is_recorded() -> None:
    parsed = parse_dockerfile("# syntax=docker/dockerfile:1\nFROM a\n")
    assert parsed.directive("syntax") == "docker/dockerfile:1"


def test_directives_after_the_first_instruction_are_comments() -> None:
    parsed = parse_dockerfile("FROM a\n# escape=`\nRUN a `\nRUN b\n")
    assert parsed.escape == "\\"
    assert parsed.directives == ()
    assert len(parsed.instructions) == 3


def test_flags_are_split_off_every_instruction() -> None:
    text = 'FROM a\nCOPY --chown=1:1 --from="my stage" src dst\nRUN --mount=type=cache,target=/c make\n'
    copy, run = parse_dockerfile(text).instructions[1:]
    assert copy.flags == ("--chown=1:1", "--from=my stage")
    assert copy.args == "src dst"
    assert run.flags == ("--mount=type=cache,target=/c",)
    assert run.args == "make"


def test_double_dash_ends_flags() -> None:
    (_, copy) = parse_dockerfile("FROM a\nCOPY -- --from=x y\n").instructions
    assert copy.flags == ()
    assert copy.args == "--from=x y"


def test_json_form_is_recognised() -> None:
    text = 'FROM a\nCMD ["python", "app.py"]\nRUN [not json\nONBUILD RUN echo\n'
    cmd, run, onbuild = parse_dockerfile(text).instructions[1:]
    assert cmd.json_args == ("python", "app.py")
    assert run.json_args is None
    assert onbuild.sub_keyword == "RUN"


def test_deeply_nested_onbuild_is_checked_at_every_level() -> None:
    nested = "ONBUILD " * 3000
    (_, onbuild) = parse_dockerfile(f"FROM a\n{nested}RUN x\n").instructions
    assert onbuild.sub_keyword == "ONBUILD"
    with pytest.raises(DockerfileError, match="strings only"):
        parse_dockerfile(f"FROM a\n{nested}RUN [1]\n")


def test_bom_and_crlf() -> None:
    assert _lines("\ufeffFROM a\r\nRUN b \\\r\n c\r\n") == [(1, "FROM a"), (2, "RUN b  c")]


def test_empty_text_has_no_instructions() -> None:
    assert parse_dockerfile("").instructions == ()
    assert parse_dockerfile("# only a comment\n\n").instructions == ()


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("# escape=x\nFROM a\n", 1, "invalid escape token"),
        ("# syntax=a\n# escape=\\\n# escape=`\nFROM a\n", 3, "only one escape parser directive"),
        ("FROM a\n\nRUN <<EOF\nbody\n", 3, "unterminated heredoc"),
        ('FROM a\nRUN ["sh", 1]\n', 2, "arrays must be comprised of strings only"),
        ("FROM a\nRUN true\nENV ONLYNAME\n", 3, "ENV must have two arguments"),
        ("FROM a\nLABEL a=b c\n", 2, "can't find = in"),
    ],
)
def test_parse_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_dockerfile(text)
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"line {line}: ")
    assert caught.value.hint


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_or_raises_a_dockerfile_error(text: str) -> None:
    try:
        parsed = parse_dockerfile(text)
    except DockerfileError as error:
        assert error.line >= 1
        return
    lines = text.removeprefix("\ufeff").split("\n")
    for instruction in parsed.instructions:
        assert 1 <= instruction.line <= instruction.end_line <= len(lines)


@settings(max_examples=100, deadline=None)
@given(dockerfiles())
def test_generated_dockerfiles_start_with_from_or_arg(text: str) -> None:
    keywords = [i.keyword for i in parse_dockerfile(text).instructions]
    assert keywords[0] in ("ARG", "FROM")
    assert "FROM" in keywords
