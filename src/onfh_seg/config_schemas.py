"""Schemas of the configs (types and allowed values only; the defaults live in ``configs/<name>.yaml``).

One dataclass per tool and nested section; ``SCHEMAS`` maps a config name to its schema and ``TOOLS`` to
the command that reads it. ``onfh_seg.config.validate`` checks a config against these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

Path_ = str  # a path given as text
Reference = Literal["acetabulum", "viable_head"]


@dataclass
class QCSettings:
    head_ml_range: tuple[float, float]
    min_confidence: float


@dataclass
class DicomSettings:
    write_seg: bool
    write_sr: bool
    sr_without_seg: bool
    rules: Union[dict[str, Any], None]


@dataclass
class InferSettings:
    """configs/infer.yaml (onfh-infer, :func:`onfh_seg.segment`); fields in the YAML's order (the run record's)."""

    input: Path_
    out_dir: Path_
    model_dir: Path_
    provider: Literal["auto", "cpu", "cuda"]
    threads: int = dataclasses.field(metadata={"min": 0})
    cuda_tf32: bool = dataclasses.field()
    workers: int = dataclasses.field(metadata={"min": 1})
    tta: bool = dataclasses.field()
    fast: bool = dataclasses.field()
    reference: Reference = dataclasses.field()
    overlay: bool = dataclasses.field()
    resume: bool = dataclasses.field()
    max_image_mb: float = dataclasses.field(metadata={"min": 1})
    allow_unknown_orientation: bool = dataclasses.field()
    geometry: Literal["auto", "sform", "qform"] = dataclasses.field()
    wait_lock: bool = dataclasses.field()
    engine: str = dataclasses.field()
    executor: Literal["local", "dask"] = dataclasses.field()
    scheduler: Union[str, None] = dataclasses.field()
    reanalyse: Union[Path_, None] = dataclasses.field()
    series: str = dataclasses.field(metadata={  # which series of a DICOM study (io.dicom_select)
        "pattern": r"auto|all-t1|[0-9]+|[0-9]+(\.[0-9]+)+",
        "allowed": "auto, all-t1, a SeriesNumber or a SeriesInstanceUID"})
    qc: QCSettings = dataclasses.field()
    anatomy: dict[str, Any] = dataclasses.field()  # enabled + AnatomyLimits overrides (infer/anatomy.py checks them)
    dicom: DicomSettings = dataclasses.field()


@dataclass(frozen=True)
class RegistrationSettings:
    """configs/track.yaml ``registration`` (also the fields of ``track.register.RegistrationParams``)."""

    radius_factor: float  # metric mask: ball of radius_factor x head radius (baseline)
    crop_margin_mm: float  # crop half-width = radius_factor x radius + margin (moving: + 2 margins)
    histogram_bins: int
    sampling_percentage: float
    shrink_factors: list[int]
    smoothing_sigmas_mm: list[float]
    learning_rate: float
    min_step: float
    iterations: int
    relaxation: float
    seed: int
    threads: int


@dataclass
class RepeatabilitySettings:
    lesion_volume_ml: Union[float, None] = dataclasses.field(metadata={"min": 0})
    percent_head_pts: Union[float, None] = dataclasses.field(metadata={"min": 0})
    sir: Union[float, None] = dataclasses.field(metadata={"min": 0})
    regenerated_pct: Union[float, None] = dataclasses.field(metadata={"min": 0})
    head_height_loss_mm: Union[float, None] = dataclasses.field(metadata={"min": 0})
    source: str = dataclasses.field()


@dataclass
class TrackSettings:
    """configs/track.yaml (onfh-track, :func:`onfh_seg.track`)."""

    manifest: Path_
    infer_dir: Path_
    out_dir: Path_
    workers: int = dataclasses.field(metadata={"min": 1})
    executor: Literal["local", "dask"] = dataclasses.field()
    scheduler: Union[str, None] = dataclasses.field()
    resume: bool = dataclasses.field()
    wait_lock: bool = dataclasses.field()
    report: bool = dataclasses.field()
    report_pdf: bool = dataclasses.field()
    reference: Reference = dataclasses.field()
    grid_mm: float = dataclasses.field(metadata={"min": 0.05})
    boundary_mm: Union[float, None] = dataclasses.field()
    collapse_cone_deg: float = dataclasses.field()
    hip_match_max_mm: float = dataclasses.field()
    write_tfm: bool = dataclasses.field()
    min_correlation_n: int = dataclasses.field(metadata={"min": 2})
    min_lesion_ml: float = dataclasses.field(metadata={"min": 0})
    registration: RegistrationSettings = dataclasses.field()
    repeatability: RepeatabilitySettings = dataclasses.field()


@dataclass
class ExportSettings:
    """configs/export.yaml (onfh-export)."""

    coarse_ckpt: Path_
    fine_ckpt: Path_
    out_dir: Path_
    force: bool
    fine_crop_vox: int = dataclasses.field(metadata={"min": 16})
    lesion_threshold: Union[float, None] = dataclasses.field()
    ship_checkpoints: bool = dataclasses.field()
    training: Any = dataclasses.field()


@dataclass
class DiseaseSettings:
    stages: dict[str, float]
    extent: tuple[float, float]
    mitchell: dict[str, float]
    responses: dict[str, float]
    edema_fraction: float
    healthy_fraction: float


@dataclass
class AcquisitionSettings:
    orientations: dict[str, float]
    small_fov_fraction: float
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    gap_mm: tuple[float, float]
    snr: tuple[float, float]
    bias: float
    max_matrix: int
    baseline_rotation_deg: float
    baseline_translation_mm: float
    rotation_deg: float
    translation_mm: float


@dataclass
class SynthSettings:
    """configs/synth.yaml (onfh-synth)."""

    out_dir: Path_
    seed: int
    n_patients: int = dataclasses.field(metadata={"min": 1})
    months: list[float] = dataclasses.field()
    retest: bool = dataclasses.field()
    demo: bool = dataclasses.field()
    workers: int = dataclasses.field(metadata={"min": 1})
    preview: bool = dataclasses.field()
    style: Literal["a", "b", "c", "dr"] = dataclasses.field()
    style_b: dict[str, Any] = dataclasses.field()
    style_c: dict[str, Any] = dataclasses.field()
    disease: DiseaseSettings = dataclasses.field()
    acquisition: AcquisitionSettings = dataclasses.field()


@dataclass
class EvalSettings:
    """configs/eval.yaml (onfh-eval)."""

    model_dir: Path_
    out_dir: Path_
    cohort: Union[Path_, None]
    cohorts: dict[str, Union[Path_, list[Path_], None]]
    workers: int = dataclasses.field(metadata={"min": 1})
    tta: bool = dataclasses.field()
    reference: Reference = dataclasses.field()
    window: Union[Literal["patch", "crop"], None] = dataclasses.field()
    overlap: Union[float, None] = dataclasses.field()
    lesion_threshold: Union[Literal["model"], float, None] = dataclasses.field()
    generate: dict[str, Any] = dataclasses.field()


@dataclass
class NetSettings:
    channels: list[int]
    strides: list[int]
    num_res_units: int = dataclasses.field(metadata={"min": 0})
    norm: Literal["instance", "batch"] = dataclasses.field()
    act: Literal["prelu", "relu", "leakyrelu"] = dataclasses.field()
    up_kernel_size: int = dataclasses.field(metadata={"min": 1})
    dropout: float = dataclasses.field(metadata={"min": 0})


@dataclass
class ModelSettings:
    """configs/model/*.yaml: keyword arguments of ``_target_`` (``onfh_seg.model.module.SegModule``)."""

    _target_: str
    net: NetSettings
    lr: float = dataclasses.field(metadata={"min": 0})
    weight_decay: float = dataclasses.field(metadata={"min": 0})
    dice_weight: float = dataclasses.field(metadata={"min": 0})
    ce_weight: float = dataclasses.field(metadata={"min": 0})
    max_steps: int = dataclasses.field()  # ${trainer.max_steps}; the next three from data
    stage: Literal["fine", "coarse"] = dataclasses.field()
    spacing_mm: float = dataclasses.field(metadata={"min": 0.1})
    patch_vox: tuple[int, int, int] = dataclasses.field()
    teacher: Union[Path_, None] = dataclasses.field()  # distillation (SegModule): a checkpoint to learn from
    kd_weight: float = dataclasses.field(metadata={"min": 0})  # > 0 with a teacher
    kd_temperature: float = dataclasses.field(metadata={"min": 0.01})
    fp_weight: float = dataclasses.field(metadata={"min": 0})  # soft lesion mL on lesion-free samples
    volume_weight: float = dataclasses.field(metadata={"min": 0})  # |soft - true lesion mL| on every sample
    consistency_weight: float = dataclasses.field(metadata={"min": 0})  # |soft lesion mL - on a retest_view|
    consistency_deg: float = dataclasses.field(metadata={"min": 0})  # retest_view: turned up to this, in degrees,
    consistency_shift_vox: float = dataclasses.field(metadata={"min": 0})  # shifted up to this, in voxels,
    consistency_noise: float = dataclasses.field(metadata={"min": 0})  # noise SD added (normalised intensity)


@dataclass
class DataSettings:
    """configs/data/*.yaml: keyword arguments of ``_target_`` (``onfh_seg.model.data.SegDataModule``) besides
    ``generate`` / ``generate_val`` (read by ``onfh_seg.train``); ``randomise``: the domain-randomised data of
    ``*_dr*.yaml``, else null."""

    _target_: str
    stage: Literal["fine", "coarse"]
    train_manifests: list[Path_]
    val_manifests: list[Path_]
    generate: Union[dict[str, Any], None]
    generate_val: Union[dict[str, Any], None]
    cache_dir: Path_
    spacing_mm: float = dataclasses.field(metadata={"min": 0.1})
    crop_vox: int = dataclasses.field(metadata={"min": 0})
    patch_vox: tuple[int, int, int] = dataclasses.field()
    val_vox: Union[tuple[int, int, int], None] = dataclasses.field()
    batch_size: int = dataclasses.field(metadata={"min": 1})
    samples_per_epoch: int = dataclasses.field(metadata={"min": 1})
    fg_oversample: float = dataclasses.field(metadata={"min": 0})
    num_workers: int = dataclasses.field(metadata={"min": 0})
    augment: bool = dataclasses.field()
    randomise: Union[dict[str, Any], None] = dataclasses.field()


@dataclass
class TrainerSettings:
    """configs/trainer/*.yaml: keyword arguments of ``_target_`` (``pytorch_lightning.Trainer``; the ones below,
    optional ones may be absent)."""

    _target_: str
    default_root_dir: Path_
    enable_model_summary: bool
    accelerator: Literal["cpu", "gpu", "cuda", "auto"]
    devices: Union[int, str, list[int]]
    max_steps: int
    max_epochs: int
    val_check_interval: Union[int, float, None]
    check_val_every_n_epoch: Union[int, None]
    log_every_n_steps: int = dataclasses.field(metadata={"min": 1})
    precision: Union[int, str] = dataclasses.field()
    deterministic: Union[bool, Literal["warn"]] = dataclasses.field()
    gradient_clip_val: Union[float, None] = dataclasses.field()
    num_sanity_val_steps: int = dataclasses.field()
    enable_progress_bar: Union[bool, None] = None
    accumulate_grad_batches: Union[int, None] = None
    limit_train_batches: Union[int, float, None] = None
    limit_val_batches: Union[int, float, None] = None
    benchmark: Union[bool, None] = None  # cuDNN benchmark (scripts/gpu_train.py sets it on a GPU)


@dataclass
class TrainSettings:
    """configs/train.yaml with its data/, model/, callbacks/, logger/ and trainer/ groups (onfh-train)."""

    data: DataSettings
    model: ModelSettings
    trainer: TrainerSettings
    callbacks: dict[str, Union[dict[str, Any], None]]  # name -> Lightning callback (a _target_ and its arguments)
    logger: dict[str, Union[dict[str, Any], None]]  # name -> Lightning logger
    task_name: str
    seed: int
    threads: Union[int, None] = dataclasses.field(metadata={"min": 1})
    ckpt_path: Union[Path_, None] = dataclasses.field()
    init_from: Union[Path_, None] = dataclasses.field()
    run_dir: Path_ = dataclasses.field()


SCHEMAS: dict[str, type] = {
    "infer": InferSettings,
    "track": TrackSettings,
    "export": ExportSettings,
    "synth": SynthSettings,
    "eval": EvalSettings,
    "train": TrainSettings,
}
TOOLS = {"infer": "onfh-infer", "track": "onfh-track", "export": "onfh-export", "synth": "onfh-synth",
         "eval": "onfh-eval", "train": "onfh-train", "pacs": "onfh-pacs"}
