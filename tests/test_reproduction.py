"""The reproduction runner: resumable plan runs and the generated table, on tiny real runs."""

import json

from reports import reproduction
from reports.reproduction import Run

TINY = ("data.name=synthetic", "data.train_size=256", "data.val_size=128", "model.name=vgg11",
        "model.width_mult=0.125", "train.epochs=2", "train.progress=false", "train.device=cpu")


def test_plan_runs_resume_and_render(tmp_path, monkeypatch):
    plan = (Run("dense", "cifar10-vgg19-dense", TINY, None),
            Run("ad", "cifar10-vgg19-adprune", TINY + ("prune.schedule=fixed", "prune.epochs=[1]"), "dense"))
    monkeypatch.setitem(reproduction.PLANS, "tiny", plan)
    out = tmp_path / "runs"
    reproduction.run_plan("tiny", "unused-root", out)
    first = (out / "ad" / "summary.json").stat().st_mtime_ns
    reproduction.run_plan("tiny", "unused-root", out)  # completed runs are skipped, not retrained
    assert (out / "ad" / "summary.json").stat().st_mtime_ns == first

    doc = tmp_path / "docs" / "reproduction.md"
    doc.parent.mkdir()
    doc.write_text("# Reproduction\n\nintro\n\n<!-- reproduction:table -->\nold\n"
                   "<!-- /reproduction:table -->\n\nverdict\n")
    reproduction.render_doc("tiny", out, doc, "DATA")
    text = doc.read_text()
    assert "intro" in text and "verdict" in text and "\nold\n" not in text  # only the block is replaced
    dense, ad = (json.loads((out / n / "summary.json").read_text())["final"] for n in ("dense", "ad"))
    row = next(line for line in text.splitlines() if line.startswith("| ad |"))
    assert f"{ad['compression_params']:.1f}x" in row
    assert f"{dense['train_flops_cum'] / ad['train_flops_cum']:.2f}x" in row
    assert "--set data.root=DATA" in text
    assert (doc.parent / "img" / "reproduction" / "ad.png").read_bytes()[:4] == b"\x89PNG"
