"""The benchmark's own pieces: its output file keeps other devices' sections; its measurements run."""

import pytest
import torch

from adprune_core.bench import _model, concurrent_trials, dense_throughput, matmul_rate, write_section
from adprune_core.costs import training_flops


def test_write_section_replaces_only_its_device(tmp_path):
    path = tmp_path / "bench.md"
    write_section(path, "cpu", "cpu one\n")
    write_section(path, "gpu", "gpu one\n")
    write_section(path, "cpu", "cpu two\n")
    text = path.read_text()
    assert "cpu two" in text and "gpu one" in text and "cpu one" not in text
    assert text.count("<!-- bench:cpu -->") == 1


def test_measurements_are_consistent_with_the_counted_flops():
    cpu = torch.device("cpu")
    rate = matmul_rate(cpu)
    assert (rate["dtype"], rate["n"]) == ("float32", 2048) and 1e6 < rate["flops_per_s"] < 1e15  # a real clock
    row = dense_throughput("resnet18", (3, 32, 32), 10, cpu, batch=4, steps=1, rounds=1)
    # FLOP/s is images/s times the network's training FLOPs per image, counted by costs.training_flops
    per_image = training_flops(_model("resnet18", cpu, shape=(3, 32, 32), classes=10), (3, 32, 32))
    assert per_image > 3 * 0.5e9  # ResNet-18 at 32x32: about 0.56 GFLOPs to infer, about 3x that to train
    assert row["flops_per_s"] == pytest.approx(row["images_per_s"] * per_image, rel=1e-9)
    assert (row["model"], row["shape"], row["batch"]) == ("resnet18", "32x32", 4)


def test_concurrent_workers_all_report():
    rows = concurrent_trials(torch.device("cpu"), batch=4, steps=1, ks=(1, 2))
    assert [r["k"] for r in rows] == [1, 2]
    assert all(1 <= r["images_per_s"] < 1e7 for r in rows)  # every worker was timed, at a plausible rate
