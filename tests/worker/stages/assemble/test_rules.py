"""Role rules are data a site can edit; broken rule files are refused with the place at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.patients import FollowupSpec, write_patient
from worker.errors import InputError
from worker.stages.assemble.case import assemble_cases
from worker.stages.assemble.rules import DEFAULT_RULES, load_rules


def test_default_rules_load_and_cover_every_task() -> None:
    rules = load_rules()
    assert {r.task for r in rules.followup.sequences} == {"orn", "ce", "crn"}
    assert "LOCALIZER" in rules.exclude.image_type


def test_site_rules_can_add_a_sequence(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_RULES.read_text())
    data["followup"]["sequences"].append(
        {"kind": "flair", "task": "ce", "modality": "MR", "description": ["(?i)dark.?water"]}
    )
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    write_patient(tmp_path / "p", followups=(FollowupSpec("MR", "ax darkwater"),))
    with pytest.raises(InputError, match="no follow-up scan found"):
        assemble_cases(tmp_path / "p", tmp_path / "w1")
    case = assemble_cases(tmp_path / "p", tmp_path / "w2", load_rules(site)).cases[0]
    assert (case.task, case.followup_kind) == ("ce", "flair")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["followup"]["sequences"][0].update(task="lung"), "followup.sequences.0.task"),
        (lambda d: d["exclude"].update(description=["(unclosed"]), "invalid regular expression"),
        (lambda d: d.update(surprise=True), "surprise"),
    ],
)
def test_invalid_rules_are_refused_with_the_field(tmp_path: Path, mutate, message: str) -> None:
    data = yaml.safe_load(DEFAULT_RULES.read_text())
    mutate(data)
    site = tmp_path / "bad.yaml"
    site.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=message):
        load_rules(site)


def test_unreadable_and_non_yaml_rules_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be read"):
        load_rules(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("followup: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_rules(broken)
