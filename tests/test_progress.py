"""ProgressGate: the one rule for which progress reports go out."""

from __future__ import annotations

from kiln._progress import ProgressGate

MIB = 1 << 20


def let_through(gate: ProgressGate, total: int | None, steps: list[int]) -> list[int]:
    return [done for done in steps if gate.due(done, total)]


def test_the_first_report_goes_out_then_each_whole_percent() -> None:
    gate = ProgressGate()
    assert let_through(gate, 1000, [0, 5, 9, 10, 11, 25, 1000]) == [0, 10, 25, 1000]


def test_a_percent_step_skips_the_percents_between() -> None:
    gate = ProgressGate(percent_step=10)
    assert let_through(gate, 100, [0, 9, 10, 15, 19, 20, 55, 100]) == [0, 10, 20, 55, 100]


def test_every_bytes_reports_where_percents_are_far_apart_or_the_total_unknown() -> None:
    assert let_through(ProgressGate(every_bytes=64 * MIB), None, [0, 32 * MIB, 64 * MIB]) == [
        0,
        64 * MIB,
    ]
    huge = 100 << 30
    gate = ProgressGate(every_bytes=64 * MIB)
    steps = [n * 32 * MIB for n in range(5)]
    assert let_through(gate, huge, steps) == [0, 64 * MIB, 128 * MIB]


def test_the_last_report_goes_out_unless_it_was_just_made() -> None:
    gate = ProgressGate(percent_step=10)
    assert gate.due(0, 100) and gate.due(50, 100)
    assert gate.last_due(55)
    gate = ProgressGate(percent_step=10)
    assert gate.due(0, 100) and gate.due(100, 100)
    assert not gate.last_due(100)


def test_an_empty_transfer_reports_its_start_and_its_end() -> None:
    gate = ProgressGate()
    assert gate.due(0, 0)
    assert not gate.due(0, 0)
    assert gate.last_due(0)
