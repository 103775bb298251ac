"""Realistic Dockerfiles as a hypothesis strategy (exposed by :mod:`kiln.testing.strategies`).

``dockerfiles()`` draws multi-stage Dockerfiles of the kind people write for ``docker build``:
parser directives, global ARGs, ``FROM --platform ... AS``, continuations broken by comments and
blank lines, heredocs, JSON forms, ``COPY --from`` (stage, index, image) and ``RUN --mount``.
Every drawn file is valid for BuildKit's parser.
"""

from __future__ import annotations

from hypothesis import strategies as st

IMAGES = (
    "ubuntu:24.04",
    "python:3.12-slim",
    "golang:1.22",
    "node:20-alpine",
    "alpine:3.20",
    "ghcr.io/org/app:v1",
    "registry.example.com:5000/team/tool:2.1",
    "busybox",
    "scratch",
    "python:3.12-slim@sha256:" + "a" * 64,
)
STAGE_NAMES = ("build", "deps", "base", "tools", "runtime-env", "test.stage")
ARG_NAMES = ("PY", "BASE", "TAG", "VARIANT")
WORDS = ("echo", "make", "install", "-y", "--quiet", "/usr/local/bin", "a=b", "'quoted text'")
HEREDOC_NAMES = ("EOF", "EOT", "SCRIPT", "END")

_word_lists = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)


@st.composite
def dockerfiles(draw: st.DrawFn) -> str:
    """A realistic Dockerfile as text (line endings `\\n` or `\\r\\n`)."""
    escape = draw(st.sampled_from(("\\", "\\", "`")))
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append("# syntax=docker/dockerfile:1")
    if escape == "`":
        lines.append("# escape=`")
    args = draw(st.lists(st.sampled_from(ARG_NAMES), max_size=3, unique=True))
    for name in args:
        default = draw(st.sampled_from(("", "=3.12", "=ubuntu", "=")))
        lines.append(f"ARG {name}{default}")
    stage_count = draw(st.integers(min_value=1, max_value=4))
    names: list[str] = []
    for index in range(stage_count):
        lines += draw(_stage(index, names, args, escape))
    newline = draw(st.sampled_from(("\n", "\n", "\r\n")))
    return newline.join(lines) + newline


@st.composite
def _stage(
    draw: st.DrawFn, index: int, names: list[str], args: list[str], escape: str
) -> list[str]:
    image_choices = list(IMAGES) + names + [f"${{{name}}}" for name in args]
    image = draw(st.sampled_from(image_choices))
    platform = draw(st.sampled_from(("", "--platform=$BUILDPLATFORM ", "--platform=linux/amd64 ")))
    keyword = draw(st.sampled_from(("FROM", "FROM", "from")))
    line = f"{keyword} {platform}{image}"
    if draw(st.booleans()):
        name = draw(st.sampled_from([n for n in STAGE_NAMES if n not in names] or ["last"]))
        names.append(name)
        line += f" {draw(st.sampled_from(('AS', 'as')))} {name}"
    body = [line]
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        body += draw(_body_instruction(index, names, escape))
    return body


def _body_instruction(index: int, names: list[str], escape: str) -> st.SearchStrategy[list[str]]:
    sources = list(IMAGES[:6]) + names + [str(i) for i in range(index)]
    return st.one_of(
        _word_lists.map(lambda w: [f"RUN {w}"]),
        _continued_run(escape),
        _heredoc(),
        st.sampled_from(sources).map(lambda s: [f"COPY --from={s} /src /dst"]),
        st.sampled_from(sources).map(
            lambda s: [f"RUN --mount=type=bind,from={s},target=/mnt {escape}", "    ls /mnt"]
        ),
        st.sampled_from(
            (
                ["WORKDIR /app"],
                ["ENV A=1 B=2"],
                ['LABEL org.example="x"'],
                ["EXPOSE 8080"],
                ["USER nobody"],
                ['CMD ["sh", "-c", "echo hi"]'],
                ['COPY ["a b", "/dst/"]'],
                ["ONBUILD RUN echo triggered"],
                ["HEALTHCHECK --interval=5s CMD true"],
                ["STOPSIGNAL SIGTERM"],
                ['VOLUME ["/data"]'],
                ['SHELL ["/bin/bash", "-c"]'],
                ["# a comment"],
                [""],
            )
        ),
    )


@st.composite
def _continued_run(draw: st.DrawFn, escape: str) -> list[str]:
    pieces = draw(st.lists(_word_lists, min_size=2, max_size=4))
    lines = [f"RUN {pieces[0]} {escape}"]
    for piece in pieces[1:-1]:
        lines += draw(st.sampled_from(([], ["    # inside"], [""], ["  "])))
        lines.append(f"    && {piece} {escape}")
    lines.append(f"    && {pieces[-1]}")
    return lines


@st.composite
def _heredoc(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(HEREDOC_NAMES))
    quoted = draw(st.sampled_from((name, f"'{name}'", f'"{name}"')))
    head = draw(
        st.sampled_from((f"RUN <<{quoted}", f"RUN cat <<{quoted} > /f", f"COPY <<{quoted} /f"))
    )
    body = draw(st.lists(_word_lists, max_size=3))
    return [head, *body, name]
