"""Golden Raft transcripts: every ``testdata/*.txt`` script, run by the interaction runner.

Each script documents one behaviour (see the ``#`` comments inside). The output must match
exactly; after an intended change, regenerate with ``DISCOVERD_REWRITE=1 pytest`` and read
the diff like a code review.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from discoverd.testing.interaction import ScriptError, run_script

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_testdata_is_present() -> None:
    assert len(SCRIPTS) >= 9, [p.name for p in SCRIPTS]


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_interaction(path: Path) -> None:
    expected, actual = run_script(path)
    assert actual == expected


def test_rewrite_fills_in_expectations(tmp_path: Path) -> None:
    script = tmp_path / "s.txt"
    script.write_text("# a comment\nadd-nodes 1 voters=(1)\n----\n\ncampaign 1\n----\nstale\n")
    expected, actual = run_script(script, rewrite=True)
    assert expected != actual
    assert script.read_text() == actual
    assert actual.startswith("# a comment\nadd-nodes 1 voters=(1)\n----\n1: follower term=1")
    assert "campaign 1\n----\nok\n" in actual
    again, now = run_script(script, rewrite=False)
    assert again == now == actual


@pytest.mark.parametrize(
    "text",
    [
        "frobnicate 1\n----\n",
        "add-nodes 1 voters=(1)\n",  # no ---- line
        "add-nodes 1 voters=(1) colour=red\n----\n",
        "add-nodes x\n----\n",
        "add-nodes 1 voters=(1)\n----\n\ncampaign 9\n----\n",
    ],
)
def test_malformed_scripts_are_rejected(tmp_path: Path, text: str) -> None:
    script = tmp_path / "bad.txt"
    script.write_text(text)
    with pytest.raises(ScriptError):
        run_script(script, rewrite=False)


def test_core_errors_are_printed_not_raised(tmp_path: Path) -> None:
    script = tmp_path / "err.txt"
    script.write_text("add-nodes 3 voters=(1,2,3)\n----\n\npropose 2 x\n----\n")
    _, actual = run_script(script, rewrite=False)
    assert actual.endswith("propose 2 x\n----\nerror: NotLeader: member 2 is not the leader\n")
