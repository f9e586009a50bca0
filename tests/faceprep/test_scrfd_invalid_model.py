"""A model file that exists but is not a usable SCRFD network: one-line errors naming the file.

Through the factory (``InvalidModelError``, a ValueError) and through ``faceprep crop`` (a usage error,
exit code 2, no traceback), for ``--model`` and for ``FACEPREP_SCRFD_MODEL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from faceprep.builtin.scrfd import ScrfdDetector
from faceprep.cli import main
from faceprep.models import InvalidModelError

# --------------------------------------------------------------------- a tiny ONNX file, hand-encoded
# (the onnx package is not a dependency). Field numbers from onnx.proto: ModelProto ir_version=1,
# graph=7, opset_import=8; GraphProto node=1, name=2, input=11, output=12; NodeProto input=1,
# output=2, op_type=4; ValueInfoProto name=1, type=2; TypeProto tensor_type=1; Tensor elem_type=1,
# shape=2; TensorShapeProto dim=1; Dimension dim_value=1.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, d)) for d in shape)
    tensor = _field(1, 1) + _field(2, dims)  # elem_type FLOAT
    return _field(1, name) + _field(2, _field(1, tensor))


def identity_model(shape: tuple[int, ...]) -> bytes:
    """An ONNX model ``y = Identity(x)`` with float input and output of ``shape``."""
    node = _field(1, "x") + _field(2, "y") + _field(4, "Identity")
    graph = _field(1, node) + _field(2, "g") + _field(11, _value_info("x", shape))
    graph += _field(12, _value_info("y", shape))
    return _field(1, 8) + _field(7, graph) + _field(8, _field(1, "") + _field(2, 13))


# --------------------------------------------------------------------- the bad files


@pytest.fixture
def truncated(tmp_path: Path, scrfd_model: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(scrfd_model.read_bytes()[: scrfd_model.stat().st_size // 3])
    return path


@pytest.fixture
def random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def test_truncated_and_random_files_are_not_valid_onnx(truncated: Path, random_bytes: Path) -> None:
    for path in (truncated, random_bytes):
        with pytest.raises(InvalidModelError) as exc:
            ScrfdDetector(model=path, num_threads=1)
        message = str(exc.value)
        assert message.startswith(f"{path}: not a valid ONNX model: ") and "\n" not in message
        assert "ONNXRuntimeError" not in message and len(message) < 300
        assert isinstance(exc.value, ValueError) and exc.value.path == str(path)


def test_valid_onnx_with_wrong_shapes_is_not_scrfd(tmp_path: Path) -> None:
    wrong_output = tmp_path / "identity.onnx"
    wrong_output.write_bytes(identity_model((1, 3, 640, 640)))
    with pytest.raises(InvalidModelError) as exc:
        ScrfdDetector(model=wrong_output, num_threads=1)
    assert str(exc.value) == (
        f"{wrong_output}: not an SCRFD model: unexpected SCRFD output shape (1, 3, 640, 640) (input 640)"
    )
    wrong_input = tmp_path / "grey.onnx"
    wrong_input.write_bytes(identity_model((1, 1, 640, 640)))
    with pytest.raises(InvalidModelError) as exc:
        ScrfdDetector(model=wrong_input, num_threads=1)
    assert str(exc.value) == (
        f"{wrong_input}: not an SCRFD model: expected one 1x3xHxW input, got [[1, 1, 640, 640]]"
    )


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "a.png")
    return folder


@pytest.mark.parametrize("how", ["--model", "env"])
def test_crop_with_a_corrupt_model_is_a_one_line_usage_error(
    how: str, truncated: Path, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["crop", str(src), str(tmp_path / "out"), "--workers", "1"]
    if how == "--model":
        args += ["--model", str(truncated)]
    else:
        monkeypatch.setenv("FACEPREP_SCRFD_MODEL", str(truncated))  # detector auto picks scrfd
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"{truncated}: not a valid ONNX model" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, InvalidModelError)
    assert not os.path.exists(tmp_path / "out" / "metadata.jsonl")
