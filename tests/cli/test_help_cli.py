"""`kiln --help` and each command's: a line per command, a paragraph per command, every default
shown, one metavariable per option across commands, and `kiln -V` (issue 13)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from kiln import __version__
from kiln.cli import build_parser, main
from kiln.cli._help import DEFAULT_WORD, HelpFormatter

# The word a help text may use instead of a value: "repeatable" options collect, and have none.
REPEATABLE = "repeatable"


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _one_liners() -> dict[str, str | None]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.help for action in sub._choices_actions}


def _options() -> Iterator[tuple[str, argparse.Action]]:
    for name, command in _commands().items():
        for action in command._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


def test_every_command_has_a_one_line_description_in_kiln_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    helps = _one_liners()
    assert set(helps) == set(_commands())
    for name, text in helps.items():
        assert text and "\n" not in text, name
        assert f"    {name} " in out, name


def test_every_command_has_a_paragraph_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    for name, command in _commands().items():
        assert command.description, f"kiln {name} --help has no description"
        assert command.description != _one_liners()[name], name
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert out.startswith("usage: kiln " + name), name
        first_words = " ".join(command.description.split()[:4])
        assert first_words in " ".join(out.split()), name


def test_every_option_that_takes_a_value_says_its_default() -> None:
    """Written out ("(default: derived from the path)") or appended from the parser's value."""
    missing = []
    for name, action in _options():
        if action.nargs == 0 or isinstance(action, argparse._VersionAction):
            continue
        shown = HelpFormatter("kiln")._get_help_string(action) or ""
        if DEFAULT_WORD not in shown and REPEATABLE not in shown:
            missing.append(f"kiln {name} {action.option_strings[0]}")
    assert missing == []


def test_a_default_value_is_appended_where_the_help_does_not_say_it() -> None:
    parser = argparse.ArgumentParser(prog="t", formatter_class=HelpFormatter)
    parser.add_argument("--limit", metavar="N", type=int, default=20, help="at most N")
    parser.add_argument("--said", default=3, help="written (default: three)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = " ".join(parser.format_help().split())
    assert "at most N (default: 20)" in text
    assert "written (default: three)" in text and "(default: 3)" not in text
    assert "a switch (default" not in text


def test_an_option_has_one_metavariable_across_commands() -> None:
    seen: dict[str, set[str]] = {}
    for _command, action in _options():
        if action.nargs == 0:
            continue
        metavar = action.metavar or action.dest.upper()
        seen.setdefault(action.option_strings[-1], set()).add(metavar)
    assert {option: names for option, names in seen.items() if len(names) > 1} == {}


def test_metavariables_are_words_in_capitals_never_a_dest_spelled_by_argparse() -> None:
    """`--data-dir DIR`, not `--data-dir DATA_DIR`; `reference` is `REF`, as `--import REF`."""
    odd = []
    for name, command in _commands().items():
        for action in command._actions:
            if action.nargs == 0 or isinstance(action, argparse._SubParsersAction):
                continue
            if action.choices is not None and action.metavar is None:
                continue  # shown as its choices, {cloud,ideal}
            metavar = action.metavar or (
                action.dest.upper() if action.option_strings else action.dest
            )
            if not isinstance(metavar, str) or "_" in metavar or metavar != metavar.upper():
                odd.append(f"kiln {name} {action.dest}: {metavar}")
    assert odd == []


def test_a_build_id_is_called_ID_by_every_command() -> None:
    named = {
        name: action.metavar
        for name, command in _commands().items()
        for action in command._actions
        if action.dest == "build_id"
    }
    assert named  # resume, cancel, status, logs at least
    assert set(named.values()) == {"ID"}, named


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flags_print_the_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flag])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"kiln {__version__}"
