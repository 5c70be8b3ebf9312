"""Probe benchmark: how general are the edge model's features?

    python scripts/bench_probe.py --data ../shared/datasets [--bundle BUNDLE]

The cry detector's embedding (its pooled 128-d features, just before the classifier head) is
frozen: the shipped float ONNX graph gets that tensor as an extra output, so no torch is
involved and exactly the shipped network is measured. A clip's embedding is the mean of its
windows' (0.5 s hop). On each task a linear probe (logistic regression) and a 3-layer MLP probe
are fitted on the `train` split and scored once on `test` (splits disjoint by group, as in the
manifests), next to the majority-class baseline:
- events: glass_break / background / crying_baby;
- cry reason: hungry / belly_pain / burping / discomfort / tired (exploratory: 84 % hungry);
- background: speech / music / noise;
- machine: normal vs the same clips with a synthetic fault (impulses, tone or bearing
  modulation at -15 dB; see bench_anomaly.py). One machine only: not group-disjoint.
Results go to scripts/results/probe.json and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_anomaly import FAULTS, _scaled

from models import metrics
from models.audio import load_mono
from models.bundle import load_bundle
from models.dataset import read_dataset
from models.frontend import LogMel
from models.runtimes.onnx import OnnxRuntime
from models.signing import TrustedKeys

HOP = 8000
SEED = 11


def embedding_runtime(float_onnx: Path, workdir: Path) -> OnnxRuntime:
    """The float graph with the head's input (the pooled embedding) as its output."""
    model = onnx.load(str(float_onnx))
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = producers[model.graph.output[0].name]
    head = producers[softmax.input[0]]
    embedding = head.input[0]
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(embedding, 1, None))
    path = workdir / "embedding.onnx"
    onnx.save(model, str(path))
    return OnnxRuntime(path, threads=2)


def clip_embedding(runtime: OnnxRuntime, logmel: LogMel, samples: np.ndarray) -> np.ndarray:
    padded = np.pad(samples, (0, max(0, logmel.config.window_samples - len(samples))))
    return runtime.run(logmel.windows(padded, HOP)[:, None]).mean(axis=0)


def tasks(data: Path, rng: np.random.Generator) -> dict[str, list[tuple[np.ndarray, str, str]]]:
    """task -> [(samples, label, split)]"""
    out: dict[str, list[tuple[np.ndarray, str, str]]] = {}
    for task, dataset in (
        ("events", "events"),
        ("cry_reason", "cry"),
        ("background", "background"),
    ):
        out[task] = [
            (load_mono(c.path), c.label, c.split or "")
            for c in tqdm(read_dataset(data / dataset).clips, desc=task, leave=False)
        ]
    machine = []
    for clip in read_dataset(data / "machine").clips:
        if clip.label != "normal":
            continue
        x = load_mono(clip.path)
        machine.append((x, "normal", clip.split or ""))
        fault = list(FAULTS.values())[int(rng.integers(len(FAULTS)))]
        machine.append((_scaled(x, fault(x, rng), -15.0), "fault", clip.split or ""))
    out["machine_fault"] = machine
    return out


def probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    labels: list[str],
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result: dict[str, Any] = {}
    majority = np.bincount(train_y, minlength=len(labels)).argmax()
    base = metrics.classification_report(test_y, np.full(len(test_y), majority), labels)
    result["majority"] = {"accuracy": base["accuracy"], "macro_f1": base["macro_f1"]}
    probes = {
        "linear": LogisticRegression(max_iter=2000, class_weight="balanced"),
        "mlp3": MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=1000, random_state=0),
    }
    for name, estimator in probes.items():
        fitted = make_pipeline(StandardScaler(), estimator).fit(train_x, train_y)
        report = metrics.classification_report(test_y, fitted.predict(test_x), labels)
        result[name] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=REPO / "models/pretrained/cry-detector")
    parser.add_argument("--trusted", type=Path, default=REPO / "models/pretrained/keys")
    parser.add_argument("--out", type=Path, default=REPO / "scripts/results/probe.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, TrustedKeys.from_paths([args.trusted]))
    logmel = LogMel(bundle.manifest.features)
    results: dict[str, Any] = {"bundle": f"{bundle.manifest.name} {bundle.manifest.version}"}
    with tempfile.TemporaryDirectory() as tmp:
        runtime = embedding_runtime(bundle.path("onnx_float"), Path(tmp))
        for task, clips in tasks(args.data, np.random.default_rng(SEED)).items():
            labels = sorted({label for _, label, _ in clips})
            x = np.array(
                [
                    clip_embedding(runtime, logmel, s)
                    for s, _, _ in tqdm(clips, desc=f"{task} embeddings", leave=False)
                ]
            )
            y = np.array([labels.index(label) for _, label, _ in clips])
            split = np.array([s for _, _, s in clips])
            train, test = split == "train", split == "test"
            results[task] = {
                "labels": labels,
                "train": int(train.sum()),
                "test": int(test.sum()),
                **probe(x[train], y[train], x[test], y[test], labels),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"probe of the frozen {results['bundle']} embedding; test split accuracy / macro-F1")
    print(f"{'task':<15} {'train':>5} {'test':>5} {'majority':>13} {'linear':>13} {'3-layer':>13}")
    for task, r in results.items():
        if task == "bundle":
            continue
        cells = [
            f"{r[k]['accuracy']:.3f}/{r[k]['macro_f1']:.3f}" for k in ("majority", "linear", "mlp3")
        ]
        print(f"{task:<15} {r['train']:>5} {r['test']:>5} " + " ".join(f"{c:>13}" for c in cells))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
