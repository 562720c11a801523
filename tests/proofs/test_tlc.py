"""TLC model-checks every CI model of proofs/ and each ends as catalogued.

The unmutated models must finish with no error; each mutated model switches off
one protocol rule and TLC must report the named invariant violated, with a
counterexample trace: the specs' checks can fail.  The runner itself must also
fail loudly on a spec that does not parse.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proofs import tlc

CI_MODELS = [m for m in tlc.CATALOGUE if m.ci]


@pytest.mark.parametrize("model", CI_MODELS, ids=[m.name for m in CI_MODELS])
def test_model_ends_as_catalogued(model: tlc.Model) -> None:
    outcome = tlc.check(model)
    assert outcome.meets(model), (
        f"{model.name}: expected {model.expect or 'no error'}, TLC said "
        f"{outcome.verdict}\n{outcome.output[-3000:]}"
    )
    if model.expect is None:
        assert outcome.distinct_states and outcome.distinct_states > 100, "a vacuous model"
    elif model.name.startswith("mutant_"):
        # A protocol violation needs steps; a false quorum fact shows in one state.
        assert outcome.trace_states >= 2, "a violation needs a trace from the initial state"


MUTANTS = [m for m in tlc.CATALOGUE if m.name.startswith("mutant_") and m.ci]


@pytest.mark.parametrize("model", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutation_alone_causes_the_violation(model: tlc.Model, tmp_path: Path) -> None:
    """The mutant's own model with the mutation undone (every MUTATE_ flag FALSE,
    the quorum back to 2f+1) passes: the violation comes from the rule removed."""
    text = model.config.read_text()
    undone = re.sub(r"(MUTATE_\w+) = TRUE", r"\1 = FALSE", text)
    undone = re.sub(r"Quorum = \d+", "Quorum = 3", undone)
    assert undone != text, f"{model.name} mutates nothing"
    twin = _same_model(model.spec, undone, model.undone_simulate)
    if twin is not None:
        # That very model runs in CI already (test_model_ends_as_catalogued), and must
        # end with no error there: running TLC on it twice would prove nothing more.
        assert twin.ci and twin.expect is None, twin
        return
    config = tmp_path / model.config.name
    config.write_text(undone)
    outcome = tlc.run_tlc(tlc.PROOFS / f"{model.spec}.tla", config, simulate=model.undone_simulate)
    assert outcome.verdict == "ok", outcome.output[-3000:]


def _constants(config_text: str) -> str:
    """A .cfg without its comments and blank lines: what TLC reads."""
    lines = (line.split("\\*", 1)[0].strip() for line in config_text.splitlines())
    return "\n".join(line for line in lines if line)


def _same_model(spec: str, config_text: str, simulate: int) -> tlc.Model | None:
    """The catalogued model TLC would run identically to ``config_text``, if any."""
    wanted = _constants(config_text)
    for other in tlc.CATALOGUE:
        if (other.spec, other.simulate) == (spec, simulate) and (
            _constants(other.config.read_text()) == wanted
        ):
            return other
    return None


def test_an_undone_mutant_identical_to_a_model_is_recognised() -> None:
    """mutant_live_no_join undone is live_bft; a real difference is not hidden."""
    mutant = next(m for m in tlc.CATALOGUE if m.name == "mutant_live_no_join")
    undone = mutant.config.read_text().replace("MUTATE_NO_JOIN = TRUE", "MUTATE_NO_JOIN = FALSE")
    twin = _same_model(mutant.spec, undone, mutant.undone_simulate)
    assert twin is not None and twin.name == "live_bft"
    assert _same_model(mutant.spec, undone.replace("MaxRegency = 2", "MaxRegency = 1"), 0) is None
    assert _same_model(mutant.spec, undone, 100) is None


def test_a_spec_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    spec = tmp_path / "Broken.tla"
    spec.write_text("---- MODULE Broken ----\nVARIABLE x\nInit == x = \nNext == x' = x\n====\n")
    config = tmp_path / "Broken.cfg"
    config.write_text("INIT Init\nNEXT Next\n")
    outcome = tlc.run_tlc(spec, config)
    assert outcome.verdict == "parse-error", outcome.output


def test_an_unexpected_deadlock_is_reported(tmp_path: Path) -> None:
    spec = tmp_path / "Stuck.tla"
    spec.write_text(
        "---- MODULE Stuck ----\nEXTENDS Naturals\nVARIABLE x\nInit == x = 0\n"
        "Next == x < 2 /\\ x' = x + 1\n====\n"
    )
    config = tmp_path / "Stuck.cfg"
    config.write_text("INIT Init\nNEXT Next\n")
    assert tlc.run_tlc(spec, config, deadlock=True).verdict == "deadlock"
    assert tlc.run_tlc(spec, config).verdict == "ok"


def test_a_simulation_reports_a_clean_run_and_a_violation(tmp_path: Path) -> None:
    """Simulation mode (the Fallback samples) ends 'ok' only when no behaviour broke an
    invariant, and reports the violated one with its trace otherwise."""
    spec = tmp_path / "Count.tla"
    spec.write_text(
        "---- MODULE Count ----\nEXTENDS Naturals\nVARIABLE x\nInit == x = 0\n"
        "Next == x < 6 /\\ x' = x + 1\nSmall == x < 10\nTiny == x < 4\n====\n"
    )
    config = tmp_path / "Count.cfg"
    config.write_text("INIT Init\nNEXT Next\nINVARIANT Small\n")
    clean = tlc.run_tlc(spec, config, simulate=50)
    assert clean.verdict == "ok", clean.output
    config.write_text("INIT Init\nNEXT Next\nINVARIANT Tiny\n")
    broken = tlc.run_tlc(spec, config, simulate=50)
    assert broken.verdict == "violated:Tiny" and broken.trace_states == 5, broken.output


def test_a_violated_action_property_is_named(tmp_path: Path) -> None:
    """RefinesBftCore is an action property ([][A]_v): TLC names it when a step breaks
    it, in a search and in a simulation, and the runner reports it as violated."""
    spec = tmp_path / "Wrap.tla"
    spec.write_text(
        "---- MODULE Wrap ----\nEXTENDS Naturals\nVARIABLE x\nInit == x = 0\n"
        "Next == x' = (x + 1) % 4\nSpec == Init /\\ [][Next]_x\n"
        "Grows == [][x' > x]_x\nBounded == [][x' < 4]_x\n====\n"
    )
    config = tmp_path / "Wrap.cfg"
    config.write_text("SPECIFICATION Spec\nPROPERTY Bounded\n")
    assert tlc.run_tlc(spec, config).verdict == "ok"
    config.write_text("SPECIFICATION Spec\nPROPERTY Grows\n")
    for simulate in (0, 20):
        broken = tlc.run_tlc(spec, config, simulate=simulate)
        assert broken.verdict == "violated:Grows" and broken.trace_states == 5, broken.output


@pytest.mark.parametrize(
    ("model_name", "spec", "module", "exact"),
    [
        ("bft_byz_h1", "BftCore", "BftCore.tla", "{x \\in Regencies : x < g} \\X Blocks"),
        (
            "claims_exact_fallback",
            "FallbackRefinesBftCore",
            "Fallback.tla",
            "below == {x \\in Regencies : x < g}",
        ),
    ],
)
def test_a_wrong_claims_shortcut_is_caught(
    model_name: str, spec: str, module: str, exact: str, tmp_path: Path
) -> None:
    """ByzClaims builds the Byzantine STOP-DATA claims directly instead of filtering
    every candidate (the filter made the CI models several times slower).
    ByzClaimsExact compares the two; a shortcut that also lets a Byzantine replica
    claim a write proof from its own regency must be reported."""
    broken = []
    for source in tlc.PROOFS.glob("*.tla"):
        text = source.read_text()
        if exact in text:
            text = text.replace(exact, exact.replace("x < g", "x <= g"))
            broken.append(source.name)
        (tmp_path / source.name).write_text(text)
    assert broken == [module], broken
    model = next(m for m in tlc.CATALOGUE if m.name == model_name)
    config = tmp_path / model.config.name
    config.write_text(model.config.read_text())
    outcome = tlc.run_tlc(tmp_path / f"{spec}.tla", config, simulate=model.simulate)
    assert outcome.verdict == "violated:ByzClaimsExact", outcome.output[-3000:]


def test_an_initial_state_bftcore_cannot_reach_is_caught(tmp_path: Path) -> None:
    """FallbackInitInBftCore.tla checks Fallback's Init against BftCore.tla: an Init
    that lets replicas ACCEPT at regency 0 without a write proof has initial states
    no BftCore behaviour reaches, and the model reports fewer targets reached than
    there are."""
    exact = "SUBSET {r \\in writersOf(w) : proofFor(w, w[r])}"
    broken = []
    for source in tlc.PROOFS.glob("*.tla"):
        text = source.read_text()
        if exact in text:
            text = text.replace(exact, "SUBSET writersOf(w)")
            broken.append(source.name)
        (tmp_path / source.name).write_text(text)
    assert broken == ["Fallback.tla"], broken
    model = next(m for m in tlc.CATALOGUE if m.name == "init_in_bft_honest")
    config = tmp_path / model.config.name
    config.write_text(model.config.read_text())
    outcome = tlc.run_tlc(tmp_path / f"{model.spec}.tla", config, witnesses=True)
    found = re.fullmatch(r"reached:(\d+)/(\d+)", outcome.verdict)
    assert found is not None, outcome.output[-3000:]
    reached, targets = int(found[1]), int(found[2])
    assert 0 < reached < targets, outcome.verdict
    assert not outcome.meets(model)  # the clean model runs in test_model_ends_as_catalogued


def test_reachability_verdicts_count_the_targets_reached() -> None:
    """The runner's reading of a -continue run: one violation per target reached,
    all of one invariant; an unfinished run or a second invariant is no pass."""
    head = '<<"targets", 2>>\n'
    done = "Model checking completed. No error has been found.\n"
    hit = "Error: Invariant Unreached is violated.\n"
    model = next(m for m in tlc.CATALOGUE if m.witnesses)
    both = tlc.parse("m", head + hit + hit + done, 1.0, witnesses=True)
    assert both.verdict == "reached:2/2" and both.meets(model)
    one = tlc.parse("m", head + hit + done, 1.0, witnesses=True)
    assert one.verdict == "reached:1/2" and not one.meets(model)
    other = "Error: Invariant TypeOK is violated.\n"
    assert tlc.parse("m", head + hit + other + done, 1.0, witnesses=True).verdict == "error"
    assert not tlc.parse("m", head + hit + hit, 1.0, witnesses=True).meets(model)
