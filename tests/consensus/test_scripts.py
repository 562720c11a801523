"""Scripted protocol transcripts (etcd-io/raft style), checked in under testdata/.

Each file is a sequence of commands and the exact output they must produce.
Set AEGIS_REWRITE=1 to regenerate the transcripts after an intended change,
then read the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sim.script import ScriptedCluster, parse, render

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    cluster = ScriptedCluster()
    pairs = list(parse(path))
    actual = [(command, cluster.run(command)) for command, _ in pairs]
    if os.environ.get("AEGIS_REWRITE") == "1":
        path.write_text(render(actual))
        return
    for (command, expected), (_, output) in zip(pairs, actual, strict=True):
        assert output == expected, f"{path.name}: `{command}` printed:\n{output}"


def test_transcripts_cover_each_regency_change_path() -> None:
    text = {p.stem: p.read_text() for p in TESTDATA.glob("*.txt")}
    assert "reproposal=False" in text["leader_crash"]  # nothing written: a fresh block
    assert "reproposal=True" in text["sync_reproposal"]  # a write proof forces the old block
    assert "equivocation at h1" in text["equivocation"]  # a second block is caught
    assert "decide h1" in text["normal_case"]
