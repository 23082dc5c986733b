"""docs/experiments.md and docs/reproductions.md agree with the recipes they are generated from
(docs/gen_experiments.py), and the parameter counts they call verified are asserted in the tests."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gen_experiments", ROOT / "docs" / "gen_experiments.py")
gen = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(gen)


@pytest.fixture(scope="module")
def recipes() -> list:
    return gen.load_recipes()


def test_docs_tables_agree_with_the_recipes(recipes):
    problems = gen.check(recipes)
    assert not problems, "\n".join([*problems, "edit the recipe's `#|` lines, then: python docs/gen_experiments.py"])


def test_a_number_that_disagrees_with_its_recipe_is_caught(recipes, tmp_path, monkeypatch):
    for name in gen.TABLES:
        shutil.copy(gen.DOCS / name, tmp_path / name)
    doc = tmp_path / "experiments.md"
    lines = doc.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith("| `synthfaces_attr` |"))
    lines[row] = lines[row].replace("0.990", "0.905")  # what a stale table said
    doc.write_text("".join(lines))
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    (problem,) = gen.check(recipes)
    assert problem.startswith("docs/experiments.md: row `synthfaces_attr` differs from the recipe in numbers")
    assert "'0.905'" in problem and "'0.990'" in problem


def test_verified_parameter_counts_are_asserted_in_the_tests(recipes):
    tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    claimed = {
        (recipe.name, count)
        for recipe in recipes
        for count in re.findall(r"\d{1,3}(?:,\d{3}){2,}", recipe.fields.get("verified", ""))
    }
    assert claimed, "no recipe claims a verified parameter count"
    missing = [f"{name}: {count}" for name, count in sorted(claimed) if count.replace(",", "_") not in tests]
    assert not missing, missing


def test_every_recipe_that_names_a_study_says_how_it_differs(recipes):
    """A reproduction says where it departs from its study and why (`#| differs:`, "nothing known" if none),
    and the reproductions table shows it."""
    missing = [r.name for r in recipes if "study" in r.fields and not r.fields.get("differs", "").strip()]
    assert not missing, f"recipes naming a study without a `#| differs:` line: {missing}"
    table = gen.reproductions_table(recipes)
    assert "| differs from the study (and why) |" in table.splitlines()[0]
    for recipe in recipes:
        if "study" in recipe.fields:
            assert gen._cell(recipe.fields["differs"]) in table, recipe.name


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("#| what: x\n#| seed: 001\n", r"unknown field `#\| seed:`; allowed: what, study"),
        ("#| study: DLStudio's DG1 study\n", r"no `#\| what:` line"),
        ("#| what: x\n#| study: seed 001\n", r"`#\| study: seed 001` is not one of: the DD-GAN latent-analysis study"),
        ("#| what: x\n#| reported: FID 1\n", r"`#\| reported:` needs a `#\| study:` line"),
        ("#| what: x\n#| differs: nothing known\n", r"`#\| differs:` needs a `#\| study:` line"),
    ],
)
def test_bad_recipe_headers_name_the_field(tmp_path, header, match):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"# @package _global_\n{header}defaults:\n  - override /data: synthfaces\n")
    with pytest.raises(ValueError, match=match):
        gen.read_fields(path)


def test_continuation_lines_extend_a_field(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("# prose\n#| what: two\n#|   lines\n# more prose\n#| needs: a GPU\ntask_name: x\n#| what: ignored\n")
    assert gen.read_fields(path) == {"what": "two lines", "needs": "a GPU"}
