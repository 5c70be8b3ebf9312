"""Signed bundles for tests: tiny ONNX graphs with a known behaviour, and variants of the
shipped cry detector (another version, another key, another front end)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Literal

from models.bundle import FileRole, load_bundle, pack_bundle, sign_bundle, write_bundle
from models.frontend import FrontendConfig
from models.reference import REFERENCE_NAME, write_reference
from models.signing import TrustedKeys, generate_keypair, load_private_key
from tests.conftest import REPO

SHIPPED = REPO / "models" / "pretrained" / "cry-detector"
SHIPPED_KEYS = REPO / "models" / "pretrained" / "keys"
# The shipped cry detector's version: what a fresh cloud registers and a fresh device runs.
SHIPPED_VERSION: str = json.loads((SHIPPED / "manifest.json").read_text())["version"]

Behaviour = Literal["mean", "nan", "always_cry"]


def tiny_onnx(path: Path, behaviour: Behaviour = "mean", frames: int = 97, mels: int = 64) -> Path:
    """A two-label classifier graph: `mean` scores softmax([m, -m]) of the features' mean m,
    `nan` gives NaN, `always_cry` gives [0.999, 0.001] whatever it hears."""
    import onnx
    from onnx import helper

    features = helper.make_tensor_value_info(
        "features", onnx.TensorProto.FLOAT, ["n", 1, frames, mels]
    )
    scores = helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["n", 2])
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m4"], axes=[2, 3], keepdims=0),
        helper.make_node("Neg", ["m4"], ["neg"]),
        helper.make_node("Concat", ["m4", "neg"], ["pair"], axis=1),
    ]
    if behaviour == "nan":
        nodes += [
            helper.make_node("Sub", ["pair", "pair"], ["zero"]),
            helper.make_node("Div", ["zero", "zero"], ["scores"]),
        ]
    elif behaviour == "always_cry":
        nodes += [
            helper.make_node("Sub", ["pair", "pair"], ["zero"]),
            helper.make_node(
                "Constant",
                [],
                ["logits"],
                value=helper.make_tensor("c", onnx.TensorProto.FLOAT, [1, 2], [3.45, -3.45]),
            ),
            helper.make_node("Add", ["zero", "logits"], ["shifted"]),
            helper.make_node("Softmax", ["shifted"], ["scores"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["pair"], ["scores"], axis=1))
    graph = helper.make_graph(nodes, "tiny", [features], [scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def signing_key(folder: Path, name: str = "test") -> tuple[Path, Path]:
    """(private, public) key files in `folder`, made once."""
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    if not private.exists():
        generate_keypair(folder, name)
    return private, public


def make_bundle(
    out: Path,
    *,
    key: Path,
    version: str,
    behaviour: Behaviour | None = None,
    features: FrontendConfig | None = None,
    reference: bool = True,
) -> Path:
    """A signed cry-detector bundle: the shipped model files under another version, or (with
    `behaviour`) a tiny ONNX graph. The reference windows are scored by its own files."""
    shipped = load_bundle(SHIPPED, TrustedKeys.from_paths([SHIPPED_KEYS])).manifest
    features = features or shipped.features
    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[FileRole, Path]]
    if behaviour is None:
        files = {
            name: (entry.role, SHIPPED / name)
            for name, entry in shipped.files.items()
            if entry.role in ("onnx", "tflite")
        }
    else:
        frames, mels = features.input_shape[2:]
        files = {"model.onnx": ("onnx", tiny_onnx(work / "m.onnx", behaviour, frames, mels))}
    if reference:
        ref = write_reference(work / REFERENCE_NAME, features, files)
        files[REFERENCE_NAME] = ("reference", ref)
    write_bundle(
        out,
        name="cry-detector",
        version=version,
        task="classification",
        labels=["cry", "other"],
        thresholds=shipped.thresholds,
        features=features,
        files=files,
    )
    shutil.rmtree(work)
    sign_bundle(out, load_private_key(key))
    return out


def pack(folder: Path) -> Path:
    archive = folder.parent / f"{folder.name}.tar.gz"
    pack_bundle(folder, archive)
    return archive


class BundleServer:
    """Serves files over real HTTP with Range support, like the cloud's download route, and
    records each request's headers. `bytes_per_s` throttles, to catch a download midway."""

    def __init__(self, token: str | None = None, bytes_per_s: int | None = None) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str]] = []
        self.bytes_per_s = bytes_per_s
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append({"path": self.path, **dict(self.headers)})
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_error(401)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (wanted := self.headers.get("Range")) is not None:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                step = server.bytes_per_s // 10 if server.bytes_per_s else len(body)
                try:
                    for at in range(start, len(body), step):
                        self.wfile.write(body[at : at + step])
                        if server.bytes_per_s:
                            time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the device went away mid-download

            def log_message(self, *_: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def add(self, archive: Path) -> str:
        """Serve `archive`; returns its URL."""
        path = f"/{archive.name}"
        self.files[path] = archive.read_bytes()
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
