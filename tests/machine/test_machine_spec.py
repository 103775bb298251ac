"""The declared machine (states/build.toml) against the code: handlers, edges, diagram."""

from __future__ import annotations

import inspect
from pathlib import Path

import attrs
import pytest

from kiln.errors import ConfigError
from kiln.machine import (
    HANDLERS,
    handlers_for,
    load_machine_spec,
    machine_names,
    render_mermaid,
)
from kiln.machine._spec import validate
from support.paths import REPO

SPEC = load_machine_spec()


def test_the_checkout_declaration_is_the_one_loaded() -> None:
    assert load_machine_spec(REPO / "states" / "build.toml") == SPEC


def test_every_state_has_a_handler_and_every_handler_is_declared() -> None:
    assert set(HANDLERS) == set(SPEC.states)


def test_every_edge_leads_to_a_declared_state() -> None:
    known = set(SPEC.states) | set(SPEC.finals)
    for source, trigger, dest in SPEC.edges():
        assert dest in known, (source, trigger, dest)


@pytest.mark.parametrize("name", [s.name for s in SPEC.states.values() if s.holds_sandbox])
def test_states_holding_a_sandbox_route_fail_and_cancel_to_cleanup(name: str) -> None:
    if name == SPEC.cleanup:
        return
    state = SPEC.states[name]
    assert state.on["fail"] == SPEC.cleanup
    assert state.on["cancel"] == SPEC.cleanup


def test_only_cleanup_reaches_done_and_every_final_is_reachable_from_cleanup() -> None:
    into_done = {source for source, _, dest in SPEC.edges() if dest == "done"}
    assert into_done == {SPEC.cleanup}
    assert set(SPEC.states[SPEC.cleanup].on.values()) >= set(SPEC.finals)


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_every_handler_says_what_it_does_on_re_entry(name: str) -> None:
    doc = inspect.getdoc(HANDLERS[name]) or ""
    assert doc.startswith("Re-entry: "), name


@pytest.mark.parametrize("name", machine_names())
def test_committed_diagram_is_fresh(name: str) -> None:
    committed = (REPO / "diagrams" / f"{name}.mmd").read_text(encoding="utf-8")
    rendered = render_mermaid(load_machine_spec(name=name))
    assert committed == rendered, f"run `kiln diagram` and commit diagrams/{name}.mmd"


def test_every_declared_machine_is_found() -> None:
    assert machine_names() == sorted(p.stem for p in (REPO / "states").glob("*.toml"))
    assert "build" in machine_names()


def test_diagram_names_every_state_and_edge() -> None:
    text = render_mermaid(SPEC)
    for source, trigger, dest in SPEC.edges():
        assert f"{source} --> {dest} : {trigger}" in text
    assert render_mermaid(SPEC) == text


def test_a_holding_state_that_fails_straight_to_a_final_is_rejected() -> None:
    states = dict(SPEC.states)
    upload = states["upload"]
    states["upload"] = attrs.evolve(upload, on={**upload.on, "fail": "failed"})
    with pytest.raises(ConfigError, match="must lead to 'cleanup'"):
        validate(attrs.evolve(SPEC, states=states))


def test_an_edge_to_an_unknown_state_is_rejected() -> None:
    states = dict(SPEC.states)
    states["sign"] = attrs.evolve(states["sign"], on={**states["sign"].on, "succeed": "nowhere"})
    with pytest.raises(ConfigError, match="unknown 'nowhere'"):
        validate(attrs.evolve(SPEC, states=states))


def test_a_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "build.toml"
    broken.write_text("[machine]\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed"):
        load_machine_spec(broken)


def test_backoff_grows_and_is_capped() -> None:
    delays = [SPEC.backoff.delay(n) for n in range(1, 8)]
    assert delays[0] == SPEC.backoff.initial_s
    assert delays == sorted(delays)
    assert max(delays) == SPEC.backoff.max_s


def test_every_trigger_is_declared_with_what_it_means() -> None:
    used = {trigger for _, trigger, _ in SPEC.edges()} | set(SPEC.interventions)
    assert used == set(SPEC.triggers)
    assert all(doc.strip() for doc in SPEC.triggers.values())


def test_a_trigger_no_code_fires_is_rejected() -> None:
    spec = attrs.evolve(SPEC, triggers={**SPEC.triggers, "teleport": "Nothing fires it."})
    with pytest.raises(ConfigError, match="'teleport': no code fires it"):
        validate(spec)


def test_an_intervention_from_an_unknown_state_is_rejected() -> None:
    lost = SPEC.interventions["reaped"]
    interventions = {**SPEC.interventions, "reaped": attrs.evolve(lost, sources=("nowhere",))}
    with pytest.raises(ConfigError, match="from unknown 'nowhere'"):
        validate(attrs.evolve(SPEC, interventions=interventions))


def test_giving_up_needs_leaving_as_entered() -> None:
    states = dict(SPEC.states)
    states["upload"] = attrs.evolve(states["upload"], gives_up="Gave up")
    with pytest.raises(ConfigError, match="gives_up needs leaves_as_entered"):
        validate(attrs.evolve(SPEC, states=states))


def test_a_state_left_as_entered_needs_an_edge_out_for_each_way_in() -> None:
    states = dict(SPEC.states)
    upload = states["upload"]
    states["upload"] = attrs.evolve(upload, on={**upload.on, "start_over": "cleanup"})
    with pytest.raises(ConfigError, match="entered by 'start_over' but has no 'start_over' edge"):
        validate(attrs.evolve(SPEC, states=states))


def test_a_machine_without_handlers_is_refused() -> None:
    with pytest.raises(ConfigError, match="no handler"):
        handlers_for(attrs.evolve(SPEC, name="unregistered"))


def test_a_named_machine_is_loaded_from_its_own_file() -> None:
    assert load_machine_spec(name="build") == SPEC
    with pytest.raises(ConfigError, match=r"nonexistent\.toml"):
        load_machine_spec(name="nonexistent")


def test_the_diagram_draws_every_intervention() -> None:
    text = render_mermaid(SPEC)
    for source, trigger, dest in SPEC.intervention_edges():
        assert f"--> {dest} : {trigger}" in text
        assert source == "*" or f"{source} --> {dest} : {trigger}" in text
