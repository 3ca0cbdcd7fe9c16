"""summary.html and its plots: structure, links, escaping, identifiers, and thin data."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.worker.audit.test_trends import cohort, failed_followup, followup
from worker.audit import summary
from worker.audit.summary import DISCLAIMER, PLOTS_DIR, write_summary
from worker.audit.trends import patient_trends

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = ("lesion_dose.png", "per_task.png", "volume_vs_months.png")
#: Elements without an end tag in HTML.
VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "wbr", "source"})
RUN_FACTS = {"model": "demo-unet3d", "tau": 0.8, "source": "/archive/<hn>", "duration": "3 min 12 s"}


class Page(HTMLParser):
    """What the tests look at in the page; ``problems`` lists end tags that do not match."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(values["src"] or "")
        if tag == "a":
            self.links.append(values["href"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(f"unexpected </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack and self.stack[-1] in ("h1", "h2"):
            self.headings.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.problems == []
    assert page.stack == []  # every element closed
    return page


def write_linked_files(rows: list[dict[str, Any]], out: Path) -> None:
    """The previews and reports the rows point to, as the pipeline would have left them."""
    for row in rows:
        for name in ("preview_path", "report_path"):
            if row.get(name):
                path = out / row[name]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(PNG_SIGNATURE if name == "preview_path" else b"{}")


def summarise(rows: list[dict[str, Any]], out: Path, **kwargs: Any) -> Path:
    write_linked_files(rows, out)
    return write_summary(rows, patient_trends(rows), out, **kwargs)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = cohort()
    row = next(r for r in rows if r["patient_alias"] == "pt-a-growing")
    row["warnings"] = "low contrast <script>alert('x')</script> | second & last"
    row["registration_needs_review"] = True
    row["registration_flags"] = "body Dice < 0.8"
    return summarise(rows, tmp_path_factory.mktemp("audit"), run_facts=RUN_FACTS)


# --- structure --------------------------------------------------------------------------------


def test_page_has_the_sections_and_the_counts(written: Path) -> None:
    page = parse(written)
    assert written.name == "summary.html"
    assert page.tags[:1] == ["html"]
    assert page.headings == [
        "Radiotherapy toxicity audit",
        "Run",
        "Plots",
        "Patients",
        "Follow-ups",
        "Failed",
    ]
    text = " ".join(page.text)
    for count, label in ((7, "Patients"), (19, "Follow-ups"), (17, "Succeeded"), (2, "Failed")):
        assert f"{count}{label}" in "".join(page.text).replace("\n", ""), label
    assert DISCLAIMER in text
    assert "/archive/<hn>" in text  # run facts, escaped in the source, shown as given


def test_every_plot_is_a_png_on_the_page(written: Path) -> None:
    page = parse(written)
    for name in PLOT_NAMES:
        path = written.parent / PLOTS_DIR / name
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 5_000, name
        assert f"{PLOTS_DIR}/{name}" in page.images


def test_links_and_images_are_relative_and_exist(written: Path) -> None:
    page = parse(written)
    targets = page.images + page.links
    assert targets
    for target in targets:
        assert "://" not in target and not target.startswith("/"), target
        assert (written.parent / unquote(target)).is_file(), target
    # One thumbnail per succeeded follow-up, linking to the preview itself.
    previews = [t for t in page.images if t.endswith("preview.png")]
    assert len(previews) == 17
    assert set(previews) <= set(page.links)
    assert sum(t.endswith("report.json") for t in page.links) == 17


def test_page_is_self_contained(written: Path) -> None:
    page = parse(written)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "style" in page.tags


def test_data_text_is_escaped(written: Path) -> None:
    source = written.read_text(encoding="utf-8")
    assert "<script>" not in source
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in source
    assert "second &amp; last" in source
    assert "body Dice &lt; 0.8" in source


def test_failures_are_listed_with_stage_code_and_reason(written: Path) -> None:
    source = written.read_text(encoding="utf-8")
    failed = source[source.index("<h2>Failed</h2>") :]
    for text in (
        "register",
        "registration-diverged",
        "assemble",
        "no-rtdose",
        "no RTDOSE in the patient&#x27;s",
    ):
        assert text in failed, text
    assert "pt-f-failed" in failed and "pt-d-appears" in failed


def test_patients_table_has_course_and_sentence(written: Path) -> None:
    source = written.read_text(encoding="utf-8")
    patients = source[source.index("<h2>Patients</h2>") : source.index("<h2>Follow-ups</h2>")]
    assert "peaking" in patients
    assert "A lesion counts from 0.05 cc" in patients  # the rules are stated with the table
    assert (
        "appears at 7 months (0.6 cc); grows to 1.1 cc at 12 months; shrinks to 0.5 cc at 17 months"
        in patients
    )


# --- identifiers ------------------------------------------------------------------------------


def test_no_patient_id_unless_the_rows_carry_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summary, "draw_plots", lambda rows, trends: [])  # the tables are what matters
    without = summarise(cohort(), tmp_path / "without").read_text(encoding="utf-8")
    assert "Patient ID" not in without
    rows = cohort()
    for row in rows:
        row["patient_id"] = "ID-" + str(row["patient_alias"]).upper()
    with_ids = summarise(rows, tmp_path / "with").read_text(encoding="utf-8")
    assert "Patient ID" in with_ids
    assert "ID-PT-A-GROWING" in with_ids


# --- thin data --------------------------------------------------------------------------------


def test_no_succeeded_followup_still_gives_a_valid_page(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    # An earlier run's plots must not stay behind as if they were this run's.
    (out / PLOTS_DIR).mkdir(parents=True)
    (out / PLOTS_DIR / "volume_vs_months.png").write_bytes(PNG_SIGNATURE)
    rows = [failed_followup("pt-x", None, None, task=None), failed_followup("pt-y", "2020-03-01", 2.0)]
    page = parse(summarise(rows, out))
    assert sorted(p.name for p in (out / PLOTS_DIR).iterdir()) == ["per_task.png"]
    assert page.images == [f"{PLOTS_DIR}/per_task.png"]
    text = " ".join(page.text)
    assert "no volume plot" in text and "no dose histogram" in text


def test_no_rows_at_all(tmp_path: Path) -> None:
    page = parse(summarise([], tmp_path))
    assert page.images == []
    assert "No follow-ups." in " ".join(page.text)


def test_one_followup_with_missing_values(tmp_path: Path) -> None:
    row = followup("pt-x", "2020-03-01", None, 0.5)
    row.update(lesion_dmean_gy=None, lesion_components=None, preview_path=None, registration_method=None)
    page = parse(summarise([row], tmp_path))
    assert f"{PLOTS_DIR}/volume_vs_months.png" in page.images  # months from the date
    assert not [t for t in page.images if t.endswith("preview.png")]


def test_the_same_rows_give_the_same_page_and_plots(tmp_path: Path) -> None:
    first = summarise(cohort(), tmp_path / "one")
    second = summarise(list(reversed(cohort())), tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    for name in PLOT_NAMES:
        one, two = (p.parent / PLOTS_DIR / name for p in (first, second))
        assert one.read_bytes() == two.read_bytes(), name
    leftovers = [p for p in (tmp_path / "one").rglob(".*") if p.is_file()]
    assert leftovers == []  # atomic writes leave no temporary files
