"""`kiln completion bash|zsh|fish`: scripts generated from the parser, so every command and option
is in them; each shell present on this machine checks its script's syntax, and bash completes
with it (issue 13)."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.cli import build_parser, main
from kiln.cli.completion import SCRIPTS, script
from kiln.machine import load_machine_spec

SHELLS = sorted(SCRIPTS)
# How each shell checks a script's syntax without running it.
SYNTAX_CHECK = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}
CHECK_TIMEOUT_S = 30
FISH_LINE = re.compile(r"complete -c kiln( (-[A-Za-z]|[\w-]+|'(?:[^'\\]|\\.)*'))*")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _printed(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_names_every_command_and_option(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _printed(shell, capsys)
    assert text == script(shell, build_parser())
    for name, command in _commands().items():
        assert f" {name}" in text, name
        for action in command._actions:
            for flag in action.option_strings:
                # fish names a long option without its dashes (-l state), a short one (-s f).
                spelled = {"fish": f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"}
                assert spelled.get(shell, flag) in text, f"{shell}: kiln {name} {flag}"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_completes_the_declared_states_for_ls_state(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = load_machine_spec()
    text = _printed(shell, capsys)
    for name in (*spec.states, *spec.finals):
        assert name in text


@pytest.mark.parametrize("shell", SHELLS)
def test_the_shell_accepts_the_script_where_it_is_installed(
    shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _printed(shell, capsys)
    path = tmp_path / f"kiln.{shell}"
    path.write_text(text, encoding="utf-8")
    if shutil.which(shell) is not None:
        checked = subprocess.run(
            [*SYNTAX_CHECK[shell], str(path)],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
        )
        assert checked.returncode == 0, checked.stderr
        return
    # Not installed here: the parts the shell loads the script by are checked instead.
    expected = {
        "bash": ["complete -o default -F _kiln_complete kiln"],
        "zsh": ["#compdef kiln", "compdef _kiln kiln", "_describe -t commands"],
        "fish": ["complete -c kiln -f", "__fish_use_subcommand"],
    }[shell]
    for part in expected:
        assert part in text
    if shell == "zsh":
        # Its quoting is the shell's (POSIX): every quote closes (shlex raises otherwise).
        assert shlex.split(text, comments=True)
    if shell == "fish":
        # One complete command a line, each quoted word closed (fish escapes \' and \\ in it).
        for line in text.splitlines():
            assert line.startswith("#") or FISH_LINE.fullmatch(line), line


def _bash_complete(script_path: Path, words: list[str]) -> list[str]:
    """What the bash script offers for ``words`` (the last one being completed)."""
    program = (
        f"source {script_path}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_kiln_complete\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, timeout=CHECK_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run the bash completion script")
    path = tmp_path / "kiln.bash"
    path.write_text(_printed("bash", capsys), encoding="utf-8")
    spec = load_machine_spec()
    assert _bash_complete(path, ["kiln", "l"]) == ["ls", "logs"]
    assert "--follow" in _bash_complete(path, ["kiln", "logs", "--f"])
    states = _bash_complete(path, ["kiln", "ls", "--state", ""])
    assert set(spec.finals) <= set(states) and set(spec.states) <= set(states)
    assert _bash_complete(path, ["kiln", "completion", "z"]) == ["zsh"]
    # A value with no words of kiln's (a URL, a path): nothing offered, bash completes files.
    assert _bash_complete(path, ["kiln", "build", "--store", ""]) == []


def _fish_complete(script_path: Path, line: str) -> list[str]:
    """What fish offers for the command line ``line``: each candidate without its description."""
    done = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script_path}; complete -C {shlex.quote(line)}"],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return [candidate.split("\t")[0] for candidate in done.stdout.splitlines()]


def test_fish_completes_commands_options_and_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _printed("fish", capsys)
    spec = load_machine_spec()
    if shutil.which("fish") is None:
        # Not installed here: the values of --state are offered on a line of their own, before
        # the line with the option's help (fish shows the last description given).
        values = text.index("__fish_seen_subcommand_from ls' -l state -x -a '")
        described = text.index("__fish_seen_subcommand_from ls' -l state -x -d '")
        assert values < described
        return
    path = tmp_path / "kiln.fish"
    path.write_text(text, encoding="utf-8")
    assert _fish_complete(path, "kiln l") == ["logs", "ls"]
    assert "--follow" in _fish_complete(path, "kiln logs --f")
    states = _fish_complete(path, "kiln ls --state ")
    assert set(spec.finals) <= set(states) and set(spec.states) <= set(states)
    assert _fish_complete(path, "kiln completion z") == ["zsh"]
