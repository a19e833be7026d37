"""The README's numbers about the presets are the presets' own: its presets table, and the
sentences that name a preset's seeds and references."""

import re
from pathlib import Path

import pytest

from lpla_fast.study import ExperimentConfig
from lpla_fast.study.groups import plan_groups
from lpla_fast.study.settings import PRESETS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def presets_table() -> dict:
    """{preset: {column: cell}} from the README's table whose first column is "preset"."""
    lines = [line for line in README.splitlines() if line.startswith("| preset |")]
    assert len(lines) == 1, "the README has one presets table"
    start = README.splitlines().index(lines[0])
    rows = README.splitlines()[start:]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:
        if not row.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))
        table[cells["preset"].strip("`")] = cells
    return table


def encoders_trained(config: ExperimentConfig) -> int:
    return sum(group.encoders for group in plan_groups(config))


def test_the_table_has_every_preset():
    assert set(presets_table()) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_presets_row_states_its_values(name):
    row, config = presets_table()[name], ExperimentConfig.preset(name)
    assert int(row["members per encoder"].replace(",", "")) == config.sizes.target_members
    assert int(row["seeds"]) == config.seeds
    assert int(row["references per target"]) == config.references
    assert int(row["encoders trained"]) == encoders_trained(config)


def test_the_sentences_about_the_presets_agree():
    default = ExperimentConfig.preset("default")
    assert re.search(r"`--seeds`, (\d+) by default", README).group(1) == str(default.seeds)
    assert re.search(r"`--references`, (\d+) by default", README).group(1) == str(default.references)
    full = re.search(r"`--preset full` has (\d+)\s+references\s+per\s+target", README)
    assert full and int(full.group(1)) == ExperimentConfig.preset("full").references
    paper = ExperimentConfig.preset("paper")
    stated = re.search(r"`--preset paper` is .*?(\d+) seeds with (\d+) references.*?= (\d+) encoders", README, re.S)
    assert stated and tuple(map(int, stated.groups())) == (paper.seeds, paper.references, encoders_trained(paper))
    run = re.search(r"`lpla experiment --out runs/default` \(the default preset: .*?(\d+) members\s+per encoder; "
                    r".*?= (\d+) encoders\)", README, re.S)
    assert run and tuple(map(int, run.groups())) == (default.sizes.target_members, encoders_trained(default))
