"""Reference windows: a bundle proves on the device that its files compute what they computed
when it was built, and a wrong file, a wrong front end or NaN scores are caught before use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bundle import PRETRAINED_DIR, load_bundle, sign_bundle, update_manifest
from models.frontend import FrontendConfig
from models.inference import BundleModel, InferenceError
from models.reference import REFERENCE_NAME, TOLERANCE, ReferenceMismatchError, check_reference
from models.runtimes import runtime_kinds
from models.signing import TrustedKeys, load_private_key
from tests.bundles import SHIPPED_KEYS, make_bundle, signing_key

pytest.importorskip("onnx")
RELEASE = TrustedKeys.from_paths([SHIPPED_KEYS])


@pytest.mark.parametrize("name", ["cry-detector", "machine-anomaly"])
def test_shipped_bundles_pass_their_reference_on_every_runtime(name: str) -> None:
    bundle = load_bundle(PRETRAINED_DIR / name, RELEASE)
    checked = 0
    for kind in ("onnx", "tflite"):
        if kind not in runtime_kinds():
            continue
        for precision in ("int8", "float"):
            model = BundleModel(bundle, runtime=kind, precision=precision)  # type: ignore[arg-type]
            assert check_reference(bundle, model) <= TOLERANCE
            checked += 1
    assert checked >= 2


def test_a_model_file_swapped_for_another_fails_its_reference(tmp_path: Path) -> None:
    private, public = signing_key(tmp_path)
    real = make_bundle(tmp_path / "real", key=private, version="2.0.0")
    tiny = make_bundle(tmp_path / "tiny", key=private, version="2.0.1", behaviour="mean")
    # The tiny bundle's model with the real one's reference: signed, loadable, but wrong.
    trusted = TrustedKeys.from_paths([public])
    tiny_files = {n: e.model_dump() for n, e in load_bundle(tiny, trusted).manifest.files.items()}
    tiny_files[REFERENCE_NAME] = load_bundle(real, trusted).manifest.files[REFERENCE_NAME]
    (tiny / REFERENCE_NAME).write_bytes((real / REFERENCE_NAME).read_bytes())
    update_manifest(tiny, files=tiny_files)
    sign_bundle(tiny, load_private_key(private))
    bundle = load_bundle(tiny, trusted)
    with pytest.raises(ReferenceMismatchError, match="differ from the builder's"):
        check_reference(bundle, BundleModel(bundle))


def test_nan_scores_fail_the_self_test(tmp_path: Path) -> None:
    private, public = signing_key(tmp_path)
    folder = make_bundle(tmp_path / "nan", key=private, version="2.0.0", behaviour="nan")
    bundle = load_bundle(folder, TrustedKeys.from_paths([public]))
    with pytest.raises(InferenceError, match="NaN"):
        check_reference(bundle, BundleModel(bundle))


def test_a_runtime_without_reference_scores_is_refused(tmp_path: Path) -> None:
    private, public = signing_key(tmp_path)
    folder = make_bundle(tmp_path / "b", key=private, version="2.0.0", behaviour="mean")
    bundle = load_bundle(folder, TrustedKeys.from_paths([public]))
    model = BundleModel(bundle)
    model.runtime_kind = "tflite"  # as on a device whose only runtime is TFLite
    with pytest.raises(ReferenceMismatchError, match="no scores for tflite"):
        check_reference(bundle, model)


def test_reference_audio_is_stored_as_pcm_and_independent_of_the_front_end(tmp_path: Path) -> None:
    private, public = signing_key(tmp_path)
    features = FrontendConfig(n_mels=40)
    folder = make_bundle(
        tmp_path / "b", key=private, version="2.0.0", behaviour="mean", features=features
    )
    with np.load(folder / REFERENCE_NAME, allow_pickle=False) as data:
        assert data["audio"].dtype == np.int16 and data["audio"].shape == (5, 16000)
        assert data["scores_onnx"].shape == (5, 2)
    bundle = load_bundle(folder, TrustedKeys.from_paths([public]))
    assert check_reference(bundle, BundleModel(bundle)) < 1e-5
