"""ONNX export of a pick (followup.onnx_export): a failure is reported, never raised, and leaves no file."""

import torch
from torch import nn

from followup.onnx_export import export_onnx
from tests.helpers import small_model


class Unexportable(nn.Module):
    """Eigenvalues have no ONNX operator: the exporter fails on this network."""

    def forward(self, x):
        return torch.linalg.eigvals(x[:, 0]).real.flatten(1)


def test_a_failed_export_is_described_and_leaves_no_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier pick's graph")
    result = export_onnx(Unexportable(), path, (3, 4, 4))
    assert result["file"] is None and result["error"].startswith("ConversionError: ")
    assert "\x1b[" not in result["error"] and len(result["error"].splitlines()) == 1
    assert not path.exists()


def test_an_export_runs_with_any_batch_size(tmp_path):
    model = small_model("vgg11").eval()
    result = export_onnx(model, tmp_path / "model.onnx", (3, 32, 32))
    assert result["file"] == "model.onnx" and (tmp_path / "model.onnx").stat().st_size > 1000
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    try:
        import onnxruntime as ort
    except ImportError:
        assert result["matches_torch"] is None
        return
    assert result["matches_torch"] is True and result["onnxruntime_max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), model(x), atol=1e-4)
