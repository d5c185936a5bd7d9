"""Notebook hygiene: stored without outputs, in the book, one call per explorer, glued numbers."""

import json
import re
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_header_is_a_reading_guide(path):
    # What a reader must know before the chapter and how long it takes, in its own paragraph.
    text = "".join(json.loads(path.read_text())["cells"][0]["source"])
    guide = re.search(r"\*\*Reading time:\*\* about .+?\. \*\*Before this chapter:\*\* .+", text)
    assert guide, (
        f"{path.name}: the header lacks '**Reading time:** about ... **Before this chapter:** ...'"
    )


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
def test_every_explorer_is_one_call(path):
    # explorer(draw, values) shows the live slider in Jupyter and only the player in the web
    # book; calling slider( and animation_html( separately would show the explorer twice there.
    code = "\n".join(_sources(path, "code"))
    assert "explorer(" in code, f"{path.name}: no explorer (rbmem_tutorial.widgets.explorer)"
    separate = re.findall(r"\b(?:slider|animation_html)\(", code)
    assert not separate, (
        f"{path.name}: calls {sorted(set(separate))} directly; "
        "use explorer(draw, values, label=...)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_the_package_from_the_book_repository(path):
    repository = book_repository_url()
    first = _sources(path, "code")[0]
    assert "except ImportError" in first and "import rbmem_tutorial" in first, path.name
    assert f"%pip install -q git+{repository}" in first, (
        f"{path.name}: the install line does not use the repository URL in _config.yml"
    )


# --- Numbers in the prose come from the run, through myst-nb glue -------------------------------
#
# The rule: after removing what is not prose (code fences and spans, math, MyST roles such as
# {glue:text}`...` and {cite:p}`...`, link targets and URLs, section numbers, arXiv ids and
# version numbers, directive option lines, and the "Run time" line, which is measured outside the
# notebook), a chapter's markdown may not contain
#   - a number with a decimal point (0.63, 11.9),
#   - a number with thousands separators (2,350),
#   - a number with a unit of time, size or share (7 s, 60 seconds, 90%, 2 MiB),
# unless it is one of the constants below. Small integers stay free: chapter and section
# numbers, counts of panels, "eight points", "3 -> 64 -> 64 -> 2". A number that a run produces
# reaches the text as {glue:text}`name:.3f`; a setting may instead be written in math ($0.5$).
ALLOWED_NUMBERS = {
    "0.577",  # 1/sqrt(3): the loose ratio threshold (c = 1/3 in the squared form), chapter 2
    "1,000", "2,000", "4,000", "10,000", "50,000", "100,000",  # chosen sample and step counts
    "1,024",  # a chosen training-set size (2^10), chapter 2's sweep
    "3,072",  # 32 x 32 x 3, the dimension of a CIFAR-10 image
    "4,546",  # parameters of the 3 -> 64 -> 64 -> 2 velocity MLP, fixed by its architecture
}
_NOT_PROSE = [
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"\{[\w:.-]+\}`[^`]*`"),  # roles: glue, cite, ref, numref, eq
    re.compile(r"`[^`]*`"),  # code spans
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),
    re.compile(r"^#{1,6}\s+\d+(\.\d+)*", re.M),  # numbered headings
    re.compile(r"\b[Ss]ections?\s+\d+\.\d+(\s*(,|and|to|or)\s*\d+\.\d+)*"),
    re.compile(r"\barXiv:?\s*\d{4}\.\d{4,5}(v\d+)?", re.I),
    re.compile(r"\b(?:[Pp]ython|[Vv]ersion|v)\s*\d+(\.\d+)+"),
    re.compile(r"\b\d+\.\d+\.\d+\b"),  # version triples
    re.compile(r"\*\*Run time:\*\*.*?(\n\s*\n|\Z)", re.S),
    re.compile(r"\*\*Reading time:\*\*.*?(\n\s*\n|\Z)", re.S),  # an estimate, not a run
]
_FENCE = re.compile(r"^(`{3,}|:{3,})\s*(.*)$")
_NUMBER = re.compile(
    r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d*\.\d+|\d+)"
    r"(?:\s*(?:%|percent\b|s\b|ms\b|seconds?\b|minutes?\b|min\b|hours?\b|[KMG]i?B\b))?"
)


def _prose(markdown: str) -> str:
    """The markdown without code fences and directive option lines; directive bodies stay."""
    lines, code_fence = [], None
    for line in markdown.splitlines():
        fence = _FENCE.match(line.strip())
        if code_fence:
            code_fence = None if line.strip().startswith(code_fence) else code_fence
            continue
        if fence and not fence.group(2).startswith("{") and fence.group(2):
            code_fence = fence.group(1)  # ```python ... ```: code, not prose
            continue
        if fence or re.match(r"^\s*:[\w-]+:", line):
            continue  # a directive's fence line or one of its options
        lines.append(line)
    text = "\n".join(lines)
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


def unglued_numbers(markdown: str) -> list[str]:
    """Numbers in ``markdown``'s prose that look like run results and are not allowed constants."""
    found = (m.group(0) for m in _NUMBER.finditer(_prose(markdown)))
    return [n for n in found if re.search(r"[.,]\d|%|[A-Za-z]", n) and n not in ALLOWED_NUMBERS]


def test_the_number_rule_catches_run_results_and_spares_maths_and_settings():
    caught = ("The loss ends at 5.2.", "It took 7 s.", "a table of 2,350 rows",
              "about 90% of units", "lambda jumps to 11.9 here", "trained in 20 to 60 seconds")
    for text in caught:
        assert unglued_numbers(text), text
    spared = ("$\\alpha = 0.5$ and $$L = 0.25$$", "{glue:text}`lam:.2f` and `rtol=1e-5`",
              "see section 3.4 and {cite:p}`lipman2022flow`", "## 3.1 The idea",
              "arXiv 2602.00199, myst-nb 1.4.0, Python 3.11", "the loose ratio 0.577",
              "eight points, 2,000 samples", "```python\nx = 0.63\n```",
              "```{exercise} Title\n:label: ex-1.2\nUse sixteen points.\n```",
              "**Run time:** about 80 s on a 2-core CPU.\n\nNext.",
              "**Reading time:** about 25 minutes. **Before this chapter:** chapter 1.")
    for text in spared:
        assert not unglued_numbers(text), (text, unglued_numbers(text))
    assert unglued_numbers("```{exercise} Title\nThe answer is 0.63.\n```") == ["0.63"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_numbers_in_the_prose_are_glued(path):
    found = unglued_numbers("\n\n".join(_sources(path, "markdown")))
    assert not found, (
        f"{path.name}: numbers in the prose that are neither glued nor allowed constants: {found}; "
        "glue run results ({glue:text}`name:.3f`), write settings in math, or add a true constant "
        "to ALLOWED_NUMBERS with a comment"
    )


def _glue_keys(cells: list[str]) -> list[re.Pattern]:
    """The names code cells glue: literal names, f-string names as patterns, and, in a cell that
    glues a variable (``glue(name, value)`` in a loop), every identifier-like string literal."""
    keys = []
    for code in cells:
        for is_f, name in re.findall(r"\bglue\(\s*(f?)\"([^\"]+)\"", code):
            pattern = re.escape(name)
            if is_f:
                pattern = re.sub(r"\\\{.*?\\\}", ".+", pattern)  # {column}_{short} -> .+_.+
            keys.append(re.compile(pattern + "$"))
        if re.search(r"\bglue\(\s*[A-Za-z_]", code):
            keys += [re.compile(re.escape(n) + "$") for n in re.findall(r"\"(\w+)\"", code)]
    return keys


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glued_name_in_the_text_is_glued_by_the_code(path):
    # A name the text pastes but no cell glues fails only when the book is built; catch it here.
    markdown = "\n".join(_sources(path, "markdown"))
    used = {m.split(":", 1)[0] for m in re.findall(r"\{glue(?::\w+)?\}`([^`]+)`", markdown)}
    keys = _glue_keys(_sources(path, "code"))
    missing = sorted(name for name in used if not any(k.match(name) for k in keys))
    assert not missing, f"{path.name}: the text pastes {missing}, which no code cell glues"


def test_glue_keys_cover_literal_f_string_and_loop_names():
    keys = _glue_keys(['glue("a", 1.0)', 'glue(f"mem_{key}", value)',
                       'for name, value in (("b", 1.0),):\n    glue(name, value)'])
    assert all(any(k.match(n) for k in keys) for n in ("a", "mem_map", "b"))
    assert not any(k.match(n) for k in keys for n in ("c", "mem", "ab"))


# --- Glue happens out of sight -------------------------------------------------------------------
#
# Visible code cells teach; handing numbers to the prose is bookkeeping. Every ``glue(...)`` call
# lives in a code cell tagged ``remove-cell`` (myst-nb still collects the glued values from it).
_GLUE_CALL = re.compile(r"(?<![\w])glue\s*\(")


def visible_glue_cells(cells: list[dict]) -> list[int]:
    """Indices of code cells without the ``remove-cell`` tag whose code calls ``glue``."""
    found = []
    for i, cell in enumerate(cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] != "code" or "remove-cell" in tags:
            continue
        code = "\n".join(line.split("#", 1)[0] for line in "".join(cell["source"]).splitlines())
        if _GLUE_CALL.search(code):
            found.append(i)
    return found


def test_the_glue_check_flags_visible_calls_and_spares_removed_cells_and_prose():
    def code(text, *tags):
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": [text]}

    cells = [
        code('glue("a", 1.0, display=False)'),  # 0: visible, flagged
        code('glue("b", 2.0)', "remove-cell"),  # 1: removed, spared
        code('x = 1\nfor k in "cd":\n    glue(k, x)', "hide-input"),  # 2: only the input hidden
        code("myst_nb.glue('e', 3)"),  # 3: the qualified call, flagged
        code("x = 1  # glue(...) would go in a removed cell"),  # 4: a comment, spared
        code("glued = 2\nfrom myst_nb import glue"),  # 5: an import calls nothing, spared
        {"cell_type": "markdown", "metadata": {}, "source": ["glue(\"f\", 1)"]},  # 6: prose
        {"cell_type": "code", "metadata": {}, "source": ["print(glue ('g', 1))"]},  # 7: flagged
    ]
    assert visible_glue_cells(cells) == [0, 2, 3, 7]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_visible_code_cell_calls_glue(path):
    found = visible_glue_cells(json.loads(path.read_text())["cells"])
    assert not found, (
        f"{path.name}: visible code cells {found} call glue; move the glue calls into a code "
        "cell tagged remove-cell right after"
    )


def test_exercise_labels_carry_their_chapter_number_and_never_repeat():
    # A renumbered chapter must relabel its exercises: a label used twice breaks the build.
    labels = []
    for path in CHAPTERS:
        number = int(path.name[:2])
        found = re.findall(r":label: (ch(\d+)-ex\d+)", "\n".join(_sources(path, "markdown")))
        assert all(int(n) == number for _, n in found), (path.name, found)
        labels += [label for label, _ in found]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    assert not repeated, repeated


def chapter_script(cells: list[dict]) -> str:
    """The code cells of a notebook as one Python script; IPython magics and shell lines become
    ``pass`` at their indentation (ruff reads Python only)."""
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).split("\n"):
            code = line.lstrip()
            magic = code.startswith(("%", "!"))
            lines.append(line[: len(line) - len(code)] + "pass  # magic" if magic else line)
        lines.append("")
    return "\n".join(lines)


def unused_names(script: str, tmp_path: Path) -> list[str]:
    """Unused imports and names (ruff F401, F811, F841) of ``script``, but not the Colab guard's
    ``import rbmem_tutorial``, which only checks that the package is installed."""
    import subprocess
    import sys

    path = tmp_path / "chapter.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                          "--select", "F401,F811,F841", "--output-format", "concise", str(path)],
                         capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if (": F" in line or "SyntaxError" in line)
            and "`rbmem_tutorial` imported but unused" not in line]


def test_the_unused_name_check_flags_an_unused_import_and_spares_the_colab_guard(tmp_path):
    cells = [{"cell_type": "code", "source": ["try:\n", "    import rbmem_tutorial\n",
                                              "except ImportError:\n",
                                              "    %pip install -q rbmem-tutorial\n"]},
             {"cell_type": "code", "source": ["import math\n", "import time\n", "time.sleep(0)"]}]
    found = unused_names(chapter_script(cells), tmp_path)
    assert len(found) == 1 and "`math` imported but unused" in found[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_code_imports_only_what_it_uses(path, tmp_path):
    found = unused_names(chapter_script(json.loads(path.read_text())["cells"]), tmp_path)
    assert not found, f"{path.name}: " + "; ".join(line.split(": ", 1)[1] for line in found)
