"""What BuildKit's instruction parser refuses, refused by kiln while planning, in its words.

BuildKit's parser accepts any keyword and any ``--flag`` (kiln's parser does the same, see
:mod:`kiln.plan.dockerfile`); its next step, ``instructions.Parse``, refuses an unknown
instruction and, per instruction, an unknown or repeated flag, suggesting the nearest known
name ("did you mean ...?"). A Docker user gets those errors from ``docker build`` at once, so
kiln gives them before any request, with the line number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kiln.errors import DockerfileError
from kiln.plan.dockerfile import Instruction

KNOWN_INSTRUCTIONS = (
    *("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK"),
    *("LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME"),
    "WORKDIR",
)
# The flags each instruction defines (BuildKit's instructions/parse.go and commands_run*.go);
# True marks a repeatable (string list) flag, False a single one. An instruction missing here
# defines none, so any flag is unknown. ARG and STOPSIGNAL never look at their flags, nor does
# `HEALTHCHECK NONE`.
FLAGS: Mapping[str, Mapping[str, bool]] = {
    "ADD": {
        **dict.fromkeys(("chown", "chmod", "link", "keep-git-dir", "checksum", "unpack"), False),
        "exclude": True,
    },
    "COPY": {
        **dict.fromkeys(("chown", "from", "chmod", "link", "parents"), False),
        "exclude": True,
    },
    "FROM": {"platform": False},
    "RUN": {"mount": True, "device": True, "network": False, "security": False},
    "HEALTHCHECK": dict.fromkeys(
        ("interval", "timeout", "start-period", "start-interval", "retries"), False
    ),
}
BOOL_FLAGS = frozenset({"link", "keep-git-dir", "unpack", "parents"})
_FLAGS_UNCHECKED = frozenset({"ARG", "STOPSIGNAL"})
_END_OF_FLAGS = "--"
# BuildKit's suggest.Search: a suggestion is offered below this Levenshtein distance.
_SUGGEST_DISTANCE = 3


def check_instruction(instruction: Instruction) -> None:
    """Raise DockerfileError where BuildKit's ``instructions.Parse`` would fail."""
    keyword = instruction.keyword
    if keyword not in KNOWN_INSTRUCTIONS:
        written = instruction.original[: len(keyword)]  # as the user wrote it
        message = f"unknown instruction: {written}"
        raise DockerfileError(
            instruction.line,
            message + did_you_mean(written, KNOWN_INSTRUCTIONS, case_sensitive=False),
            hint=f"Dockerfile instructions are {', '.join(KNOWN_INSTRUCTIONS)}",
        )
    if keyword in _FLAGS_UNCHECKED or _is_healthcheck_none(instruction):
        return
    _check_flags(instruction, FLAGS.get(keyword, {}))


def _is_healthcheck_none(instruction: Instruction) -> bool:
    return instruction.keyword == "HEALTHCHECK" and instruction.args.upper().startswith("NONE")


def _check_flags(instruction: Instruction, known: Mapping[str, bool]) -> None:
    """BuildKit's ``BFlags.Parse``, in its words."""
    seen: set[str] = set()
    for flag in instruction.flags:
        if flag == _END_OF_FLAGS:
            return
        name, eq, value = flag.partition("=")
        bare = name.removeprefix("--")
        if bare not in known:
            raise DockerfileError(
                instruction.line,
                f"unknown flag: {name}" + did_you_mean(bare, sorted(known), case_sensitive=True),
                hint=_flag_hint(instruction.keyword, known),
            )
        if bare in seen and not known[bare]:
            raise DockerfileError(
                instruction.line,
                f"duplicate flag specified: {name}",
                hint=f"give {name} once",
            )
        seen.add(bare)
        _check_value(instruction, name, bare, value if eq else None)


def _check_value(instruction: Instruction, name: str, bare: str, value: str | None) -> None:
    if bare in BOOL_FLAGS:
        if value is not None and value.lower() not in ("true", "false"):
            problem = (
                f"missing a value on flag: {name}"
                if value == ""
                else f"expecting boolean value for flag {name}, not: {value}"
            )
            raise DockerfileError(instruction.line, problem, hint=f"write {name} or {name}=false")
    elif value is None:
        raise DockerfileError(
            instruction.line,
            f"missing a value on flag: {name}",
            hint=f"write {name}=<value> (BuildKit does not take the value as the next word)",
        )


def _flag_hint(keyword: str, known: Mapping[str, bool]) -> str:
    if not known:
        return f"{keyword} takes no flags"
    return f"{keyword} takes " + ", ".join(f"--{name}" for name in sorted(known))


def did_you_mean(value: str, options: Iterable[str], *, case_sensitive: bool) -> str:
    """BuildKit's suggestion suffix (`` (did you mean X?)``), or an empty string."""
    match = suggest(value, options, case_sensitive=case_sensitive)
    return f" (did you mean {match}?)" if match else ""


def suggest(value: str, options: Iterable[str], *, case_sensitive: bool) -> str | None:
    """BuildKit's ``suggest.Search``: the closest option under distance 3, cased like `value`.

    An exact match means the value was not the problem, so nothing is suggested.
    """
    wanted = value if case_sensitive else value.lower()
    best: str | None = None
    best_distance = _SUGGEST_DISTANCE
    for option in options:
        candidate = option if case_sensitive else option.lower()
        if candidate == wanted:
            return None
        distance = levenshtein(wanted, candidate)
        if distance < best_distance:
            best, best_distance = (
                (candidate if case_sensitive else _match_case(candidate, value)),
                distance,
            )
    return best


def _match_case(option: str, original: str) -> str:
    if original == original.lower():
        return option.lower()
    if original == original.upper():
        return option.upper()
    return option


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
