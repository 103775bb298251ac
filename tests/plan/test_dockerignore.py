"""`.dockerignore` semantics: Docker's (moby/patternmatcher), not gitignore's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.errors import ContextError
from kiln.plan import PatternMatcher, read_dockerignore


def excluded(patterns: list[str], path: str) -> bool:
    return PatternMatcher(patterns).matches(path)


# (pattern, path, excluded): a path is excluded when the pattern matches it or a parent directory.
SINGLE_PATTERN_CASES = [
    # Anchored at the context root: the difference from gitignore that matters most.
    ("foo", "foo", True),
    ("foo", "foo/bar/baz", True),
    ("foo", "sub/foo", False),
    ("foo", "foobar", False),
    ("*.go", "main.go", True),
    ("*.go", "cmd/main.go", False),
    ("*", "anything", True),
    ("*", "dir/file", True),  # through the parent `dir`
    # `**` inside a pattern with no `/` after it is still moby's `(.*/)?`: whole directories.
    ("a**b", "ab", True),
    ("a**b", "a/x/b", True),
    ("a**b", "axb", False),
    ("?**?", "aaa", False),
    ("*/*.go", "cmd/main.go", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("abc.def", "abcZdef", False),  # regex metacharacters are literal
    ("a(b)c/def", "a(b)c/def", True),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (".*", ".git", True),
    (".*", "git", False),
    # `**` spans directories, including none.
    ("**", "any/depth/at/all", True),
    ("**/foo", "foo", True),
    ("**/foo", "a/b/foo", True),
    ("**/foo", "a/b/foo/inside", True),
    ("**/foo", "a/b/xfoo", False),
    ("**/*.log", "a/b/c.log", True),
    ("**/*.log", "c.log", True),
    ("**/**/*.txt", "file.txt", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("dir/**", "dir", False),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/a/b", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a**b", "ax/b", True),
    ("a**b", "axb", False),
    # moby's suffix shortcut: `**file` is a plain suffix test.
    ("**file", "dir/myfile", True),
    # Character classes and escapes follow Go's filepath.Match.
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    ("ab[^c]", "abc", False),
    ("[\\]a]", "]", True),
    ("[\\-x]", "-", True),
    ("[x\\-]", "z", False),
    ("[a-ζ]*", "α", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a\\\\", "a\\", True),
    # Cleaning: `./`, trailing `/` and doubled slashes do not change the meaning.
    ("./foo", "foo", True),
    ("foo/", "foo/x", True),
    ("a//b", "a/b", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE_PATTERN_CASES)
def test_single_pattern(pattern: str, path: str, expected: bool) -> None:
    assert excluded([pattern], path) is expected


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        # Exceptions apply in order: a later one re-includes, an earlier one is overridden.
        (["*.go", "!main.go"], "main.go", False),
        (["!main.go", "*.go"], "main.go", True),
        # An exception can re-include beneath an excluded directory (gitignore cannot).
        (["docs", "!docs/README.md"], "docs/README.md", False),
        (["docs", "!docs/README.md"], "docs/other.md", True),
        (["docs/*", "!docs/README.md"], "docs/README.md", False),
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
        (["node_modules", "!node_modules/keep"], "node_modules/keep/a.js", False),
        ([], "anything", False),
        (["", "   "], "anything", False),
    ],
)
def test_pattern_lists(patterns: list[str], path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


@pytest.mark.parametrize(
    "pattern", ["[", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "[z-a]"]
)
def test_malformed_patterns_are_context_errors(pattern: str) -> None:
    with pytest.raises(ContextError) as err:
        PatternMatcher([pattern])
    assert "bad pattern" in str(err.value)
    assert err.value.hint is not None and ".dockerignore" in err.value.hint


def test_a_lone_exclamation_mark_is_an_error() -> None:
    with pytest.raises(ContextError, match="illegal exclusion pattern"):
        PatternMatcher(["docs", "!"])


def test_read_dockerignore_cleans_like_docker(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text(
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n"
        "  # not a comment once indented\n./dot/./slash//\r\n!\n! \n"
    )
    assert read_dockerignore(tmp_path) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "# not a comment once indented",
        "dot/slash",
        "!",
        "!",
    ]


def test_read_dockerignore_strips_a_utf8_bom(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbfbuild\n")
    assert read_dockerignore(tmp_path) == ["build"]


def test_a_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("root\n")
    (tmp_path / "build").mkdir()
    dockerfile = tmp_path / "build" / "app.Dockerfile"
    assert read_dockerignore(tmp_path, dockerfile=dockerfile) == ["root"]
    (tmp_path / "build" / "app.Dockerfile.dockerignore").write_text("specific\n")
    assert read_dockerignore(tmp_path, dockerfile=dockerfile) == ["specific"]
    assert read_dockerignore(tmp_path) == ["root"]


def test_no_dockerignore_means_no_patterns(tmp_path: Path) -> None:
    assert read_dockerignore(tmp_path) == []


def test_an_unreadable_dockerignore_is_a_context_error(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").mkdir()
    with pytest.raises(ContextError, match=r"cannot read .*\.dockerignore"):
        read_dockerignore(tmp_path)


@pytest.mark.parametrize(
    ("patterns", "directory", "expected"),
    [
        (["build"], "build", False),
        (["build", "!build/keep"], "build", True),
        (["build", "!build/keep"], "other", False),
        (["build", "!build"], "build", True),
        (["a", "!a/b/c"], "a/b", True),
        (["a", "!ab"], "a", False),
        # A glob exception could match anywhere: never skip.
        (["a", "!**/keep"], "a", True),
        (["a", "!*.txt"], "a", True),
    ],
)
def test_may_include_beneath(patterns: list[str], directory: str, expected: bool) -> None:
    assert PatternMatcher(patterns).may_include_beneath(directory) is expected


_NAME = st.text(alphabet="abcxyz._-", min_size=1, max_size=6).filter(lambda s: s not in {".", ".."})
_PATH = st.lists(_NAME, min_size=1, max_size=4).map("/".join)


@settings(max_examples=200)
@given(pattern=_PATH, path=_PATH)
def test_plain_patterns_match_the_path_and_everything_beneath_only(pattern: str, path: str) -> None:
    """Without glob characters a pattern names one path from the root, and all below it."""
    expected = path == pattern or path.startswith(pattern + "/")
    assert excluded([pattern], path) is expected


@settings(max_examples=200)
@given(pattern=_PATH, path=_PATH)
def test_an_exception_for_the_same_pattern_undoes_it(pattern: str, path: str) -> None:
    assert excluded([pattern, "!" + pattern], path) is False


# moby/patternmatcher's TestMatches (single patterns), checked as BuildKit's walk applies them.
MOBY_MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    # Go's filepath.Match tests, as moby's TestMatch runs them.
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MOBY_MATCHES)
def test_moby_pattern_cases(pattern: str, path: str, expected: bool) -> None:
    assert excluded([pattern], path) is expected


def test_go_regexp_details_are_kept() -> None:
    # moby hands `^` to Go's regexp as an anchor, and Go's `.` (in `**`) stops at a newline.
    assert excluded(["a*^b"], "ax^b") is False
    assert excluded(["^a*"], "abc") is True
    assert excluded(["a^b"], "a^b") is True  # no glob: moby compares the text
    assert excluded(["x/**/y"], "x/a\nb/y") is False
    assert excluded(["x/*/y"], "x/a\nb/y") is True


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        # BuildKit's walk passes each directory's results to its children, and an exception
        # skipped at the parent (nothing was excluded there yet) is tested on the path alone.
        (["**/node_modules", "!packages"], "packages/node_modules/x.js", True),
        (["**/node_modules", "!packages"], "packages/src/x.js", False),
        (["**/node_modules", "!packages/node_modules"], "packages/node_modules/x.js", False),
        (["docs", "!docs"], "docs/a/b", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo/bar", True),
    ],
)
def test_exceptions_follow_buildkits_walk(patterns: list[str], path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


@pytest.mark.parametrize(
    ("patterns", "directory", "expected"),
    [
        # fsutil trims a trailing `/**` or `/*` before looking for glob characters.
        (["a", "!a/keep/**"], "a", True),
        (["a", "!a/keep/*"], "b", False),
        (["a", "!a/ke^ep"], "b", True),
    ],
)
def test_may_include_beneath_as_fsutil(patterns: list[str], directory: str, expected: bool) -> None:
    assert PatternMatcher(patterns).may_include_beneath(directory) is expected


_MATCHING_PROGRAM = """
from kiln.plan import PatternMatcher
matcher = PatternMatcher(["*a" * 14 + "*c"])
names = ["a" * 40, "ab" * 20, "a" * 39 + "b"]
assert not any(matcher.matches(name) for name in names)
assert matcher.matches("a" * 28 + "c")
"""
# A backtracking engine needs hours for the program above; a linear matcher, milliseconds. The
# bound only keeps a regression from hanging CI: it is minutes away from any real run.
_HANG_GUARD_S = 120


def test_matching_is_linear_not_backtracking() -> None:
    """`*a*a*...*c` on a 40-character name took ~20 s per name with a backtracking regex."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _MATCHING_PROGRAM], timeout=_HANG_GUARD_S, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()


_GLOB = st.text(alphabet="ab*?/", min_size=1, max_size=8)
_NAME_TEXT = st.text(alphabet="ab/", max_size=10)


@settings(max_examples=300)
@given(pattern=_GLOB, path=_NAME_TEXT)
def test_the_automaton_agrees_with_the_regular_expression(pattern: str, path: str) -> None:
    """moby's translation to a regular expression, run by `re` on short inputs, is the spec."""
    body = pattern.strip("/")
    if not body or body.startswith("**") or not any(ch in body for ch in "*?"):
        return  # moby's suffix and exact shortcuts are not the regular expression
    if body.endswith("**") and not any(ch in body[:-2] for ch in "*?"):
        return  # nor is the prefix shortcut
    path = "/".join(part for part in path.split("/") if part) or "a"
    cleaned = re.sub("/+", "/", body)
    regex = _moby_regex(cleaned)
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    expected = any(re.fullmatch(regex, prefix) for prefix in prefixes)
    assert excluded([cleaned], path) is expected


def _moby_regex(pattern: str) -> str:
    """moby/patternmatcher's Compile, transcribed: `**` (eating one `/` after it) is `.*` at the
    end of the pattern and `(.*/)?` anywhere else, even where no `/` follows it (so `a**b`
    matches `ab` and `a/x/b` but not `axb`); `*` is `[^/]*`; `?` is `[^/]`."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*" and pattern[i : i + 1] == "*":
            i += 1
            if pattern[i : i + 1] == "/":
                i += 1
            out.append(".*" if i == len(pattern) else "(?:.*/)?")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)
