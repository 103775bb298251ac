"""The build options are declared once, as kiln.machine.BuildOptions' fields; the entry points'
keyword arguments, the options a submitted build carries and the CLI's flags agree with it."""

from __future__ import annotations

import argparse
import typing

from kiln.builds import BuildKwargs, SubmitKwargs, build_options, option_keywords
from kiln.cli._common import add_build_options
from kiln.cli._common import build_options as cli_build_options
from kiln.machine import BuildOptions


def test_the_keyword_arguments_are_the_declared_options_with_their_types() -> None:
    fields = typing.get_type_hints(BuildOptions)
    declared = {keyword: fields[field] for keyword, field in option_keywords().items()}
    assert typing.get_type_hints(SubmitKwargs) == declared
    entry_points = typing.get_type_hints(BuildKwargs)
    assert {keyword: entry_points[keyword] for keyword in declared} == declared


def test_every_option_given_by_keyword_is_persisted() -> None:
    values = {"public": True, "docker_compat": True, "api_url": "http://127.0.0.1:1"}
    given = {keyword: values.get(keyword, 7) for keyword in option_keywords()}
    options = build_options(given)
    for keyword, field in option_keywords().items():
        assert getattr(options, field) == given[keyword], keyword


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_build_options(parser)
    return parser


def test_the_cli_s_defaults_are_the_declared_defaults() -> None:
    args = cli_parser().parse_args([])
    assert build_options(cli_build_options(args)) == BuildOptions()


def test_every_cli_flag_reaches_its_option() -> None:
    parser = cli_parser()
    actions = {action.dest: action for action in parser._actions}
    argv: list[str] = []
    for keyword in option_keywords(cli=True):
        flag = f"--{keyword.replace('_', '-')}"
        assert flag in actions[keyword].option_strings, keyword
        argv += [flag] if actions[keyword].nargs == 0 else [flag, "3"]
    options = build_options(cli_build_options(parser.parse_args(argv)))
    for keyword, field in option_keywords(cli=True).items():
        assert getattr(options, field) in (True, 3), keyword
