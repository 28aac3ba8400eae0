"""tools/results_table.py: joins recorded runs, bench files and the papers' numbers; every published
CamVid number has a recipe; the committed tables are what the tool writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from semseg.config import load_config
from semseg.precision import family
from semseg.registry import MODELS
from tests.conftest import REPO, load_script

results_table = load_script("tools/results_table")

PUBLISHED = [n for n in MODELS.names() if "paper_camvid_miou" in MODELS.meta(n)]


def run_entry(model: str, miou: float, epochs: int) -> dict:
    return {"run": f"{model}_{epochs}", "model": model, "val_miou": miou, "epochs": epochs, "device": "CPU, 2 cores"}


def bench_file(device: str, rows: list[dict], batch: int = 2) -> dict:
    return {"device": {"device": device, "threads": 2, "gpu": "H100"}, "settings": {"batch": batch}, "results": rows}


def cells(text: str, model: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| `{model}` |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_published_camvid_numbers_are_the_papers() -> None:
    assert {n: MODELS.meta(n)["paper_camvid_miou"][0] for n in PUBLISHED} == {
        "enet": 51.3, "linknet": 55.8, "fcdensenet56": 58.9, "fcdensenet67": 60.1, "fcdensenet103": 66.9, "fcn8s": 57.0,
        "segnet": 55.6, "segnet_basic": 46.3, "bisenet_xception39": 65.6, "bisenet_resnet18": 68.7, "lrn": 61.7,
        "edanet": 66.4, "cgnet": 65.6}


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_camvid_number_has_a_recipe_for_that_model(name: str) -> None:
    path = REPO / "configs" / f"{name}_camvid.yml"
    assert path.is_file(), f"{name} has a published CamVid mIoU but no {path.name}"
    cfg = load_config(path)
    assert cfg.model.name == name and cfg.data.name == "camvid"


def test_table_joins_best_run_paper_size_and_each_device() -> None:
    runs = results_table.best_runs([run_entry("enet", 40.0, 10), run_entry("enet", 47.0, 30), run_entry("linknet", 50.0, 24)])
    cpu = bench_file("cpu", [
        {"model": "enet", "impl": "semseg", "size": [360, 480], "fwd_ms": 59.4, "train_ms": 448.2, "train_peak_mib": 723.0},
        {"model": "enet", "impl": "semseg", "size": [512, 1024], "fwd_ms": 999.0},  # another size: not this table's
        {"model": "linknet", "impl": "semseg", "size": [384, 480], "fwd_ms": 1.0, "compared_in": "linknet vs smp"},
        {"model": "smp.Linknet(resnet18)", "impl": "smp", "size": [360, 480], "fwd_ms": 2.0}])  # fmt: skip
    gpu = bench_file("cuda:0", [{"model": "enet", "impl": "semseg", "size": [360, 480], "fwd_ms": 3.26, "train_ms": 20.0,
                                 "throughput_batch": 16, "images_per_s": 812.4}], batch=8)  # fmt: skip
    text = results_table.table(["enet", "linknet", "erfnet"], runs, [cpu, gpu])
    header = text.splitlines()[0]
    assert "CPU (2 threads) forward ms (b=1)" in header and "GPU (H100) train step ms (b=8)" in header
    assert header.endswith("GPU (H100) images/s (b=16) |") and "CPU (2 threads) images/s" not in header
    assert cells(text, "enet") == ["`enet`", "47.0 (30 ep, CPU)", "51.3", "0.36", "2.5", "7.7", "59", "448", "723", "3", "20", "–", "812"]
    assert cells(text, "linknet")[1:3] == ["50.0 (24 ep, CPU)", "55.8"] and cells(text, "linknet")[6:] == ["–"] * 7
    assert cells(text, "erfnet")[1:3] == ["–", "–"]  # no run, no CamVid number in its paper
    assert "batches differ" in text


def test_update_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- results-table -->\nold\n<!-- /results-table -->\noutro\n")
    results_table.update(doc, "| new |")
    assert doc.read_text() == "intro\n<!-- results-table -->\n| new |\n<!-- /results-table -->\noutro\n"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match=r"doc\.md: needs exactly one '<!-- results-table -->'"):
        results_table.update(doc, "x")


def test_unreadable_inputs_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match=r"bench\.json: Expecting property name"):
        results_table.main(["--bench", str(bad), "--models", "enet"])


@pytest.mark.parametrize("doc, extra", [("doc/results.md", []), ("README.md", ["--trained-only"])])
def test_committed_tables_are_what_the_tool_writes(tmp_path: Path, doc: str, extra: list[str]) -> None:
    """Edit the JSON files and rerun the tool, never the tables by hand."""
    copy = tmp_path / Path(doc).name
    copy.write_text((REPO / doc).read_text())
    benches = sorted((REPO / "doc" / "results").glob("bench_*.json"))
    argv = [a for p in benches for a in ("--bench", str(p))] + extra + ["--update", str(copy)]
    assert results_table.main(argv) == 0
    assert copy.read_text() == (REPO / doc).read_text(), f"{doc} is stale: rerun tools/results_table.py {' '.join(argv[:-2])} --update {doc}"


def test_bench_files_of_one_device_and_batch_merge_into_one_column_group() -> None:
    row = lambda model, ms: {"model": model, "impl": "semseg", "size": [360, 480], "fwd_ms": ms}  # noqa: E731
    old = bench_file("cpu", [row("enet", 60.0), row("erfnet", 200.0)])
    refresh = bench_file("cpu", [row("enet", 50.0), row("linknet", 300.0)])
    gpu = bench_file("cuda:0", [row("enet", 3.0)])
    merged = results_table.merge_benches([old, refresh, gpu])
    assert len(merged) == 2
    assert sorted((r["model"], r["fwd_ms"]) for r in merged[0]["results"]) == [("enet", 50.0), ("erfnet", 200.0), ("linknet", 300.0)]
    assert old["results"] == [row("enet", 60.0), row("erfnet", 200.0)]  # the inputs are left as they were
    other_batch = bench_file("cpu", [row("enet", 70.0)], batch=8)
    assert len(results_table.merge_benches([old, other_batch])) == 2


def test_readme_model_table_is_what_the_registry_gives() -> None:
    """The README's model list is generated (`python -m semseg.models --markdown`), never typed by hand."""
    from semseg.models.__main__ import markdown

    readme = (REPO / "README.md").read_text()
    start, end = "<!-- models-table -->\n", "\n<!-- /models-table -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    block = readme.split(start)[1].split(end)[0]
    assert block == markdown(MODELS.names()), "README.md's model table is stale: rerun python -m semseg.models --markdown"
    for name in MODELS.names():
        assert (REPO / "doc" / f"{family(name)}.md").is_file(), f"{name}: no doc/{family(name)}.md"
