"""Notebook hygiene: chapters are stored without outputs, and every chapter is in the book."""

import json
from pathlib import Path

import pytest
from conftest import book_repository_url

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "book/ holds no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    cells = json.loads(path.read_text())["cells"]
    dirty = [
        i for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_table_of_contents(path):
    toc = (ROOT / "_toc.yml").read_text()
    assert f"book/{path.stem}" in toc, f"{path.name} is missing from _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_states_objectives_and_run_time(path):
    first = json.loads(path.read_text())["cells"][0]
    text = "".join(first["source"])
    assert first["cell_type"] == "markdown"
    assert "Learning objectives" in text and "Run time" in text, path.name


CHAPTERS = [p for p in NOTEBOOKS if not p.name.startswith("00_")]


def _sources(path, kind):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == kind]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_two_exercises_with_collapsed_executable_solutions(path):
    markdown = "\n".join(_sources(path, "markdown"))
    exercises = markdown.count("{exercise}")
    starts = markdown.count("{solution-start}")
    assert exercises >= 2, f"{path.name}: {exercises} exercises, at least two wanted"
    assert starts == exercises == markdown.count("{solution-end}"), path.name
    # Collapsed by default: every solution block carries the dropdown class.
    blocks = markdown.split("{solution-start}")[1:]
    assert all(":class: dropdown" in b.split("\n", 3)[1] + b.split("\n", 3)[2] for b in blocks), (
        f"{path.name}: a solution is not collapsed (:class: dropdown)"
    )
    # Executable: at least one code cell sits between each solution-start and solution-end.
    cells = json.loads(path.read_text())["cells"]
    inside, code_in = False, []
    for cell in cells:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and "{solution-start}" in text:
            inside, code_in = True, [*code_in, 0]
        if inside and cell["cell_type"] == "code":
            code_in[-1] += 1
        if cell["cell_type"] == "markdown" and "{solution-end}" in text:
            inside = False
    assert code_in and all(n > 0 for n in code_in), f"{path.name}: solutions without code {code_in}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_live_slider_has_a_kernel_free_player(path):
    code = "\n".join(_sources(path, "code"))
    assert code.count("slider(") <= code.count("animation_html("), (
        f"{path.name}: a live slider has no animation_html counterpart for the static book"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_the_package_from_the_book_repository(path):
    repository = book_repository_url()
    first = _sources(path, "code")[0]
    assert "except ImportError" in first and "import rbmem_tutorial" in first, path.name
    assert f"%pip install -q git+{repository}" in first, (
        f"{path.name}: the install line does not use the repository URL in _config.yml"
    )
