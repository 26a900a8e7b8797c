"""The benchmark's own pieces: its output file keeps other devices' sections; its measurements run."""

import torch

from adprune_core.bench import concurrent_trials, dense_throughput, matmul_rate, write_section


def test_write_section_replaces_only_its_device(tmp_path):
    path = tmp_path / "bench.md"
    write_section(path, "cpu", "cpu one\n")
    write_section(path, "gpu", "gpu one\n")
    write_section(path, "cpu", "cpu two\n")
    text = path.read_text()
    assert "cpu two" in text and "gpu one" in text and "cpu one" not in text
    assert text.count("<!-- bench:cpu -->") == 1


def test_measurements_return_positive_rates():
    cpu = torch.device("cpu")
    assert matmul_rate(cpu)["flops_per_s"] > 0
    row = dense_throughput("resnet18", (3, 32, 32), 10, cpu, batch=4, steps=1, rounds=1)
    assert row["images_per_s"] > 0 and row["flops_per_s"] > row["images_per_s"] * 1e6


def test_concurrent_workers_all_report():
    rows = concurrent_trials(torch.device("cpu"), batch=4, steps=1, ks=(1, 2))
    assert [r["k"] for r in rows] == [1, 2] and all(r["images_per_s"] > 0 for r in rows)
