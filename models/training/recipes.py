"""Training recipes: which data, which labels, which front end, which augmentation.

A recipe is data, not code, and is recorded in the bundle's training summary, so a bundle says
exactly how it was made.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.audio import SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS
from models.frontend import FrontendConfig

# The YOLOv8 classification sizes on offer (models/training/yolo.py) and the ultralytics
# configuration each is built from, from scratch: n (1.4M parameters for two classes), s (5.1M).
YOLO_CONFIGS = {"yolov8n_cls": "yolov8n-cls.yaml", "yolov8s_cls": "yolov8s-cls.yaml"}


class Source(BaseModel):
    """Clips of one dataset folder (some or all of its labels) mapped to one target label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(description="Folder name under the data root, e.g. 'cry'.")
    labels: list[str] | None = Field(None, description="Folder labels to take; None = all.")
    target: str = Field(description="The recipe label these clips teach.")
    made_by: str | None = Field(
        None, description="How to make the folder when it is not a development set, e.g. a script."
    )
    allow_group_leak: bool = Field(
        False,
        description="Accept a dataset whose groups span splits (only when no disjoint split "
        "exists, e.g. one machine); recorded in the bundle.",
    )


class Augmentation(BaseModel):
    """On-the-fly augmentation against the datasets' known shortcuts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gain_db: tuple[float, float] = Field((-30.0, 6.0), description="Random gain range.")
    band_limit_prob: float = Field(
        0.5, description="Chance of a random low-pass, so 8 kHz-origin audio is no class cue."
    )
    cutoff_hz: tuple[float, float] = Field((3400.0, 7600.0), description="Low-pass range.")
    mix_prob: float = Field(0.5, description="Chance of mixing a negative window underneath.")
    snr_db: tuple[float, float] = Field((-5.0, 20.0), description="Target-to-mix ratio range.")
    noise_floor_dbfs: tuple[float, float] = Field(
        (-85.0, -55.0), description="White noise added to every window (no digital silence)."
    )
    shift_s: float = Field(0.25, description="Random time shift of each window's start.")
    freq_masks: int = Field(
        0, description="SpecAugment: mel bands blanked per training window (0 = off)."
    )
    freq_mask_bins: int = Field(8, description="Widest blanked band, in mel bins.")
    time_masks: int = Field(
        0, description="SpecAugment: stretches of frames blanked per training window (0 = off)."
    )
    time_mask_frames: int = Field(12, description="Longest blanked stretch, in frames.")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Bundle name.")
    task: Literal["classification", "anomaly"] = Field(
        "classification",
        description="'anomaly' trains on the negative label's clips only and scores the "
        "positive label by reconstruction error.",
    )
    labels: list[str] = Field(description="Output labels, in model output order.")
    positive: str = Field(description="The label that raises events.")
    sources: list[Source] = Field(description="Where each label's clips come from.")
    features: FrontendConfig = Field(description="Front end the model is trained on.")
    train_hop_s: float = Field(0.5, description="Hop between training windows in a clip.")
    eval_hop_s: float = Field(0.25, description="Hop for validation/test windows (the edge's).")
    energy_gate_db: float = Field(
        SILENCE_BELOW_PEAK_DB,
        description="Positive-clip windows quieter than the clip's loudest window by more than "
        "this are not taught as positives (silence between cries).",
    )
    min_level_dbfs: float = Field(
        SILENCE_FLOOR_DBFS, description="Positive windows below this are dropped."
    )
    augmentation: Augmentation = Field(default_factory=Augmentation, description="See class.")
    architecture: Literal[
        "compact_cnn", "conv_attention", "conv_autoencoder", "yolov8n_cls", "yolov8s_cls"
    ] = Field("compact_cnn", description="Network.")
    image_size: int = Field(64, description="yolov8*_cls: side of the rendered spectrogram.")
    network_options: dict[str, int] = Field(
        default_factory=dict, description="Extra network arguments, e.g. {'width': 48}."
    )
    max_false_alarms_per_hour: float = Field(
        1.0, description="False-alarm budget on the validation negatives for the threshold."
    )
    epochs: int = Field(40, description="Maximum epochs.")
    patience: int = Field(8, description="Early stopping: epochs without val improvement.")
    batch_size: int = Field(64, description="Training batch size.")
    learning_rate: float = Field(2e-3, description="AdamW learning rate.")
    seed: int = Field(1234, description="Seed for every random choice.")


CRY_DETECTOR = Recipe(
    name="cry-detector",
    labels=["cry", "other"],
    positive="cry",
    sources=[
        Source(dataset="cry", target="cry"),
        Source(dataset="events", labels=["crying_baby"], target="cry"),
        Source(dataset="background", target="other"),
        Source(dataset="events", labels=["background", "glass_break"], target="other"),
        Source(dataset="machine", labels=["normal"], target="other", allow_group_leak=True),
    ],
    # Gain-invariant features: the events set's glass breaks are normalised to 0 dBFS and its
    # backgrounds are quieter, a loudness shortcut that per-window normalisation removes.
    features=FrontendConfig(normalisation="window_mean"),
    # 1.1.0: the 48-wide CompactCNN (261k parameters) beat the 32-wide one on every
    # validation measure (window ROC-AUC 0.981 vs 0.973 clean, 0.964 vs 0.941 augmented).
    network_options={"width": 48},
    learning_rate=1e-3,
    epochs=60,
    patience=12,
)

# SpecAugment masks on the training features and a cosine schedule that runs to its end.
# Trained as a 1.2.0 candidate (2026-11-21) and not shipped: it won on the recipe's selection
# measure (validation ROC-AUC on clean + augmented windows, 0.9756 vs 1.1.0's 0.9718) but lost
# on the validation clips (F1 0.975 vs 0.983), and on test it lost clip F1 (0.957 vs 0.991) and
# raised 2 false alarms on music; see models/pretrained/README-cry-detector.md.
CRY_DETECTOR_SPECAUGMENT = CRY_DETECTOR.model_copy(
    update={
        "name": "cry-detector-specaugment",
        "augmentation": Augmentation(freq_masks=2, time_masks=2),
        "epochs": 32,
        "patience": 32,
    }
)

# More negatives: music, animal and household sounds from Debian packages
# (scripts/extra_negatives.py), the material behind 1.1.0's validation false alarms. Trained as
# a 1.2.0 candidate (2026-11-21) and not shipped: it won on validation (window ROC-AUC 0.9725 vs
# 0.9718 on the selection measure, clip F1 0.992 vs 0.983), then on test raised false alarms on
# five of the nine music clips (71.5 per hour; window ROC-AUC 0.9584). Over the held-out
# background (2026-11-22) it cut full-band music false alarms about 3 times but 8 kHz music
# hardly (7.59 per hour vs 1.1.0's 10.82): the narrowband front end below is what removes those.
# See models/pretrained/README-cry-detector.md.
CRY_DETECTOR_EXTRA_NEGATIVES = CRY_DETECTOR.model_copy(
    update={
        "name": "cry-detector-extra-negatives",
        "sources": [
            *CRY_DETECTOR.sources,
            Source(
                dataset="debian_sounds",
                target="other",
                made_by="python scripts/extra_negatives.py --data ../shared/datasets --out ROOT, "
                "then train with --data ROOT",
            ),
        ],
    }
)

# Telephone band only: the front end stops at 3.4 kHz, where every recording in the sets still has
# content, so 8 kHz-origin and full-band audio look alike to the network by construction rather
# than by augmentation. The extra-negatives candidate showed why that matters: more full-band
# music made 8 kHz hold music look more like the (mostly 8 kHz-origin) cries. Same data as that
# candidate; the random low-pass now moves the top of the band (3.0-4.0 kHz) so no roll-off is a
# cue. Trained as a 1.2.0 candidate (2026-11-21) and not shipped: against a rule written before
# its training ended it matched 1.1.0 on validation clips (F1 0.984 vs 0.983, same false alarms)
# and beat it on the selection measure (0.9732 vs 0.9718) and on phone-quality negatives
# (scripts/telephone_view.py: no false alarm, 1.1.0 one), but its clean validation window
# ROC-AUC (0.9796) was 0.0012 under 1.1.0's where the rule allowed 0.001; `test` was not read.
CRY_DETECTOR_NARROWBAND = CRY_DETECTOR_EXTRA_NEGATIVES.model_copy(
    update={
        "name": "cry-detector-narrowband",
        "features": FrontendConfig(normalisation="window_mean", n_mels=48, fmax=3400.0),
        "augmentation": Augmentation(cutoff_hz=(3000.0, 4000.0)),
    }
)

# The narrowband recipe with 64 mel bands in the same 50-3400 Hz (finer harmonic detail, the input
# size the network was sized for). Trained as a 1.2.0 candidate (2026-11-21) and not shipped: it
# passed every line of its validation rule (window ROC-AUC 0.9830 vs 0.9808, clip F1 0.984, 3 false
# alarms vs 5, none on the telephone view), then on test scored window ROC-AUC 0.9706 (1.1.0
# 0.9793), cry F1 0.966 and one false alarm on the hold music. Trained again (2026-11-22) under a
# ship rule written first: 0.8-1.0 false alarms per hour of held-out music where 1.1.0 has 8-18,
# then the same two test lines failed (cry F1 0.966, window ROC-AUC 0.9687): not shipped.
# See README-cry-detector.md.
CRY_DETECTOR_NARROWBAND64 = CRY_DETECTOR_NARROWBAND.model_copy(
    update={
        "name": "cry-detector-narrowband64",
        "features": FrontendConfig(normalisation="window_mean", n_mels=64, fmax=3400.0),
    }
)

# The narrowband64 recipe with an hour of game soundtracks more among the negatives
# (`debian_music/`, scripts/extra_negatives.py: fifteen more packages, up to twelve 5 s excerpts
# a track), where its predecessors saw under nine minutes: both narrowband runs lost dev test on
# hold music, and the validation music they were selected on was too little to show it.
# Trained as the second 1.2.0 candidate (2026-11-22) and not shipped: 0.07-1.56 false alarms per
# hour over three held-out sets where 1.1.0 has 8.5-16.7, every dev test target 1.1.0 meets, but
# at its threshold (0.9996) TFLite INT8 and ONNX INT8 raise a different event on one test cry.
# It was trained on the data of commit 88308dd, whose excerpts of tracks under 70 s overlapped
# (253 of the 743 clips start elsewhere since). See README-cry-detector.md.
CRY_DETECTOR_MORE_MUSIC = CRY_DETECTOR_NARROWBAND64.model_copy(
    update={
        "name": "cry-detector-more-music",
        "sources": [
            *CRY_DETECTOR_NARROWBAND64.sources,
            Source(
                dataset="debian_music",
                target="other",
                made_by="python scripts/extra_negatives.py --data ../shared/datasets --out ROOT, "
                "then train with --data ROOT",
            ),
        ],
    }
)

# The same data and augmentation through the alternative network (not a default bundle).
CRY_DETECTOR_ATTENTION = CRY_DETECTOR.model_copy(
    update={
        "name": "cry-detector-attention",
        "architecture": "conv_attention",
        "network_options": {},
        "learning_rate": 2e-3,
        "epochs": 40,
        "patience": 8,
    }
)

# The "full" cloud model: YOLOv8n classification on spectrogram images, same data.
CRY_DETECTOR_YOLO = CRY_DETECTOR.model_copy(
    update={
        "name": "cry-detector-yolo",
        "architecture": "yolov8n_cls",
        "network_options": {},
        "epochs": 15,
        "patience": 5,
    }
)

MACHINE_ANOMALY = Recipe(
    name="machine-anomaly",
    task="anomaly",
    labels=["abnormal", "normal"],
    positive="abnormal",
    sources=[Source(dataset="machine", labels=["normal"], target="normal", allow_group_leak=True)],
    # Absolute levels: a machine that gets louder is news. One microphone per machine.
    features=FrontendConfig(),
    architecture="conv_autoencoder",
    epochs=60,
    patience=10,
    batch_size=32,
    learning_rate=1e-3,
)

RECIPES = {
    r.name: r
    for r in (
        CRY_DETECTOR,
        CRY_DETECTOR_SPECAUGMENT,
        CRY_DETECTOR_EXTRA_NEGATIVES,
        CRY_DETECTOR_NARROWBAND,
        CRY_DETECTOR_NARROWBAND64,
        CRY_DETECTOR_MORE_MUSIC,
        CRY_DETECTOR_ATTENTION,
        CRY_DETECTOR_YOLO,
        MACHINE_ANOMALY,
    )
}
