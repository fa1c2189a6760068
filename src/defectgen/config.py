"""Typed, validated parameters: one model per top-level section of params.yaml.

`load_params` is the only place that reads params.yaml. Every error names the
key, the value and what is allowed, and is raised before any stage does work.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from defectgen.core import arms
from defectgen.errors import ConfigError

ALL = "*"  # every parameter: what a stage that hashes or dumps them all declares it reads
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """What the dataset is and how to read it (used by ingest)."""

    name: str = Field(default="dataset", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    layout: Literal["folders", "image_mask", "voc", "coco", "yolo", "elpv"] = "folders"
    root: Path | None = None
    label_from: Literal["folder", "prefix", "annotation"] = "folder"
    label_pattern: str = r"^(?P<label>.+)_\d+$"
    images_dir: str = "images"
    masks_dir: str = "masks"
    annotations_dir: str = "annotations"
    coco_json: str = "annotations.json"
    yolo_yaml: str = "data.yaml"  # layout yolo: Ultralytics' data file (classes from labels)
    masks_required: bool = False
    classes: list[str] | None = None
    # defect-free classes (e.g. [ok]): classified, never synthesised; their images give
    # Valvano's drivers their layouts, and their all-zero masks mean "no defect"
    normal_classes: list[str] = Field(default_factory=list)
    elpv_bins: list[float] = Field(default_factory=lambda: [0.5])
    elpv_classes: list[str] = Field(default_factory=lambda: ["functional", "defective"])

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.layout != "elpv" and self.root is None:
            raise ValueError(
                f"data.root is required for layout '{self.layout}' "
                "(the folder holding your images; only layout 'elpv' needs none)"
            )
        if self.label_from == "annotation" and self.layout not in ("voc", "coco", "yolo"):
            raise ValueError(
                f"data.label_from = 'annotation' needs layout 'voc', 'coco' or 'yolo', "
                f"not '{self.layout}'; use 'folder' or 'prefix'"
            )
        if self.layout == "yolo" and self.label_from == "prefix":
            raise ValueError(
                "layout 'yolo' takes each image's class from its label file; "
                "data.label_from 'prefix' does not apply (leave it out)"
            )
        if self.label_from == "prefix":
            try:
                pattern = re.compile(self.label_pattern)
            except re.error as exc:
                raise ValueError(
                    f"data.label_pattern = {self.label_pattern!r} is not a valid regular "
                    f"expression ({exc})"
                ) from None
            if "label" not in pattern.groupindex:
                raise ValueError(
                    f"data.label_pattern = {self.label_pattern!r} must contain a named group "
                    "(?P<label>...) that captures the class"
                )
        bins = self.elpv_bins
        if any(not 0.0 < b < 1.0 for b in bins) or bins != sorted(set(bins)):
            raise ValueError(
                f"data.elpv_bins = {bins}: must be strictly increasing cut points inside (0, 1) "
                "(ELPV defect probabilities are 0, 1/3, 2/3 and 1)"
            )
        if len(self.elpv_classes) != len(bins) + 1:
            raise ValueError(
                f"data.elpv_classes = {self.elpv_classes}: needs len(elpv_bins) + 1 = "
                f"{len(bins) + 1} names, one per bin"
            )
        if len(set(self.elpv_classes)) != len(self.elpv_classes):
            raise ValueError(f"data.elpv_classes = {self.elpv_classes}: names must be unique")
        return self


class IngestConfig(_Section):
    """How ingest treats imperfect input."""

    min_images_per_class: int = Field(default=10, ge=0)
    on_label_conflict: Literal["error", "skip"] = "error"
    binarize_masks: bool = False
    mask_threshold: int = Field(default=128, ge=1, le=255)
    sixteen_bit: Literal["scale", "minmax"] = "scale"
    # copy is the default: DVC makes cached files read-only, which through a hard link
    # would change the permissions of the raw file too.
    link: Literal["hardlink", "copy"] = "copy"


class RoiConfig(_Section):
    """StableSDG's ROI recipe (IV-A): binarise, crop the object, tile 1:1."""

    enabled: bool = False
    foreground: Literal["bright", "dark"] = "bright"
    min_fill: float = Field(default=0.5, gt=0.0, le=1.0)
    tile: bool = True


class SplitConfig(_Section):
    train: float = Field(default=0.8, gt=0.0, lt=1.0)
    val: float = Field(default=0.1, ge=0.0, lt=1.0)
    test: float = Field(default=0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"preprocess.split fractions train={self.train}, val={self.val}, "
                f"test={self.test} sum to {total:g}; they must sum to 1"
            )
        return self


class SubsetConfig(_Section):
    """The few-shot subset of train: a fraction alpha, or a count per class (not both)."""

    alpha: float | None = Field(default=None, gt=0.0, le=1.0)
    per_class: int | None = Field(default=50, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _the_one_given(cls, data: Any) -> Any:
        """Setting one of the two leaves the other unset (null), whatever its default."""
        if isinstance(data, dict) and len({"alpha", "per_class"} & set(data)) == 1:
            other = "per_class" if "alpha" in data else "alpha"
            data = {**data, other: None}
        return data

    @model_validator(mode="after")
    def _one_of(self) -> SubsetConfig:
        if (self.alpha is None) == (self.per_class is None):
            raise ValueError(
                f"preprocess.subset: set exactly one of alpha (got {self.alpha}) and "
                f"per_class (got {self.per_class}); set the other to null"
            )
        return self


class PreprocessConfig(_Section):
    image_size: int = Field(default=64, ge=8, le=4096)
    resize: Literal["squash", "pad", "crop"] = Field(
        default="pad",
        description="how a non-square image becomes image_size x image_size: pad (the "
        "default: letterboxed, the short side padded with black, the image's own region "
        "kept in the manifest's content_box; no label changes, the defects are smaller) | "
        "crop (square tiles of the short side covering the image, all in the image's split; "
        "a tile of a defect image without a defect pixel or box is dropped, so use it with "
        "masks or boxes) | squash (scaled to the square, every shape stretched by the "
        "aspect; preprocess_report.json counts the images changed by over 1.25x); measured "
        "in experiments/results/resize-modes.md; the shared datasets are square",
    )
    empty_mask: Literal["keep", "skip"] = Field(
        default="keep",
        description="a defect too small to cover half an output pixel, which the resize "
        "would empty: keep (its strongest output pixel stays foreground, so a defect image "
        "never gets an empty mask) | skip (the image is left out); either way "
        "preprocess_report.json names the file",
    )
    color: Literal["grayscale", "rgb"] = "grayscale"
    roi: RoiConfig = Field(default_factory=RoiConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    subset: SubsetConfig = Field(default_factory=SubsetConfig)


class TinyArchConfig(_Section):
    """The tiny profile's architecture: SD's classes at toy size (about 3 M parameters)."""

    vae_channels: list[int] = Field(default_factory=lambda: [16, 32, 32], min_length=1)
    # latent cells per image side = image_size / 2 ** (len(vae_channels) - 1)
    latent_channels: int = Field(default=4, ge=1)
    unet_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    unet_layers_per_block: int = Field(default=1, ge=1)
    # Attention heads per UNet block. SD1.5's heads are 40-160 channels wide; 8 heads over
    # 32 channels would be 4 wide, which CPU attention kernels run at half speed
    # (benchmarks/results/cpu_pipeline.md), so 2 heads: 16 and 32 wide.
    unet_heads: int = Field(default=2, ge=1)
    text_hidden: int = Field(default=32, ge=8)
    text_layers: int = Field(default=2, ge=1)
    text_heads: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TinyArchConfig:
        if self.text_hidden % self.text_heads:
            raise ValueError(
                f"model.tiny.text_hidden = {self.text_hidden} must be divisible by "
                f"model.tiny.text_heads = {self.text_heads}"
            )
        if any(c % self.unet_heads for c in self.unet_channels):
            raise ValueError(
                f"model.tiny.unet_channels {self.unet_channels} must each be divisible by "
                f"model.tiny.unet_heads = {self.unet_heads}"
            )
        if any(c % 8 for c in self.vae_channels + self.unet_channels):
            raise ValueError(
                f"model.tiny channel widths {self.vae_channels} / {self.unet_channels} must be "
                "multiples of 8 (group normalisation uses 8 groups)"
            )
        return self


class ModelConfig(_Section):
    """Base diffusion model. `tiny` is built offline and pretrained; `sd15` loads a checkpoint."""

    profile: Literal["tiny", "sd15"] = "tiny"
    base: str | None = None
    revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    # torch.compile of the UNet and text encoder (adaptation and sampling) and the VAE
    # decoder (sampling), one mode: auto = "default" on CUDA, off on the CPU
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = "auto"
    # sampling: the attention's q/k/v projections fused into one matmul (diffusers'
    # fuse_qkv_projections, UNet and VAE), after the class's LoRA is fused into the weights
    fuse_qkv: bool = True
    tiny: TinyArchConfig = Field(default_factory=TinyArchConfig)

    @model_validator(mode="after")
    def _base_for_sd15(self) -> ModelConfig:
        if self.profile == "sd15" and not self.base:
            raise ValueError(
                "model.base is required for profile 'sd15': a diffusers Stable Diffusion 1.x "
                "checkpoint directory or hub id (e.g. runwayml/stable-diffusion-v1-5)"
            )
        if self.profile == "tiny" and self.base:
            raise ValueError(
                f"model.base = {self.base!r} is only read by profile 'sd15'; set it to null for "
                "'tiny' (the tiny base is pretrained by the base stage)"
            )
        return self


class VaeLossConfig(_Section):
    """The tiny VAE's objective (core/diffusion/vae_loss.py): pixel loss + weighted terms."""

    pixel: Literal["mse", "l1"] = "l1"
    kl_weight: float = Field(default=1e-6, ge=0.0)
    ssim: float = Field(default=0.5, ge=0.0)  # 1 - SSIM
    fft: float = Field(default=0.5, ge=0.0)  # L1 between 2-D spectra
    perceptual_effnet_lite0: float = Field(default=0.2, ge=0.0)  # needs the offline wheel
    adversarial: float = Field(default=0.0, ge=0.0)  # patch discriminator, hinge loss
    adversarial_start: float = Field(default=0.5, ge=0.0, lt=1.0)  # fraction of vae_steps


class BaseConfig(_Section):
    """The base stage: pretraining of the tiny profile's prior (sd15 only records its checkpoint).

    Pretraining reads the same real images the adaptation may use (`data`), never val/test.
    """

    data: Literal["subset", "train"] = "subset"
    batch_size: int = Field(default=32, ge=1)
    vae_steps: int = Field(default=215, ge=1)
    vae_lr: float = Field(default=1e-3, gt=0.0)
    unet_steps: int = Field(default=300, ge=1)
    unet_lr: float = Field(default=5e-4, gt=0.0)
    prompt: str = Field(default="a photo of a surface", min_length=1)
    uncond_prob: float = Field(default=0.1, ge=0.0, lt=1.0)
    vae_loss: VaeLossConfig = Field(default_factory=VaeLossConfig)
    # val images for the VAE's reconstruction distance (fd_effnet_lite0_recon); 0: skip
    fd_images: int = Field(default=500, ge=0)


class StepsConfig(_Section):
    steps: int = Field(ge=0)
    lr: float = Field(gt=0.0)


class LoraConfig(StepsConfig):
    rank: int = Field(default=1, ge=1)
    alpha: float | None = Field(default=None, gt=0.0)  # null: alpha = rank (scale 1)


class DreamBoothConfig(_Section):
    """Valvano et al. section 4.1: DreamBooth with class-specific prior preservation.

    The class's identifier token keeps its initial embedding (`finetune.initializer`:
    DreamBooth's rare token, e.g. 'sks'); the model learns it. Instance prompt:
    `finetune.prompt_template` with '{token} {class_noun}'; prior prompt: the template
    with the class noun alone, over `n_prior` images the base generates itself
    (DDPM ancestral sampling) before adaptation. Loss: instance + prior_weight * prior.
    """

    train: Literal["lora", "unet"] = "lora"  # LoRA (UNet + text encoder) or the full UNet
    steps: int = Field(default=150, ge=0)
    lr: float = Field(default=1e-4, gt=0.0)
    rank: int = Field(default=4, ge=1)  # train: lora
    alpha: float | None = Field(default=None, gt=0.0)  # null: alpha = rank
    class_noun: str = Field(default="defect", min_length=1)
    n_prior: int = Field(default=50, ge=1)  # class-prior images generated by the base
    prior_weight: float = Field(default=1.0, ge=0.0)  # lambda; 0 is DreamBooth without it
    prior_steps: int = Field(default=50, ge=1)  # ancestral sampler steps per prior image
    prior_guidance: float = Field(default=3.0, ge=0.0)


class FinetuneConfig(_Section):
    """StableSDG adaptation per class (Algorithm 1), the Table II ablations,
    and Valvano et al.'s DreamBooth.

    mode: ti_lora (token, then LoRA), ti (token only), lora (LoRA only; the token keeps
    its initial embedding), full_attn (token, then every attention projection trained),
    dreambooth (identifier token kept, LoRA or the full UNet trained with prior
    preservation; see DreamBoothConfig).
    """

    mode: Literal["ti_lora", "ti", "lora", "full_attn", "dreambooth"] = "ti_lora"
    classes: list[str] | None = None
    data: Literal["subset", "train"] = "subset"
    prompt_template: str = "a photo of {token}"
    token_template: str = "<{label}>"
    initializer: str | None = None  # a one-token word, or null: the mean token embedding
    batch_size: int = Field(default=4, ge=1)
    resolution: int | None = Field(default=None, ge=8)  # null: preprocess.image_size
    flip: bool = True
    ti: StepsConfig = Field(default_factory=lambda: StepsConfig(steps=150, lr=5e-4))
    lora: LoraConfig = Field(default_factory=lambda: LoraConfig(steps=150, lr=1e-4))
    full_attn: StepsConfig = Field(default_factory=lambda: StepsConfig(steps=150, lr=1e-5))
    dreambooth: DreamBoothConfig = Field(default_factory=DreamBoothConfig)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if "{token}" not in self.prompt_template:
            raise ValueError(
                f"finetune.prompt_template = {self.prompt_template!r} must contain {{token}}"
            )
        if "{label}" not in self.token_template:
            raise ValueError(
                f"finetune.token_template = {self.token_template!r} must contain {{label}}"
            )
        return self


class ClassGenerateConfig(_Section):
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    guidance: float | None = Field(default=None, ge=0.0)


class GenerateConfig(_Section):
    """Image-oriented generation (img2img from train images of the class) or txt2img."""

    mode: Literal["img2img", "txt2img"] = "img2img"
    images_per_class: int = Field(default=64, ge=1)
    # images per sampler call, an upper bound: on a CUDA out-of-memory it halves
    batch_size: int = Field(default=16, ge=1)
    steps: int = Field(default=25, ge=1)
    strength: float = Field(default=0.5, gt=0.0, le=1.0)
    guidance: float = Field(default=3.0, ge=0.0)
    per_class: dict[str, ClassGenerateConfig] = Field(
        default_factory=dict,
        description="class: {strength, guidance}, used with sweep.enabled false "
        "(profiles/neu-det-table-i.yaml: StableSDG's Table I)",
    )
    grid_per_class: int = Field(default=8, ge=1)

    def settings(self, label: str) -> tuple[float, float]:
        """(strength, guidance) for a class: its per_class entry, else the global values."""
        own = self.per_class.get(label, ClassGenerateConfig())
        strength = own.strength if own.strength is not None else self.strength
        guidance = own.guidance if own.guidance is not None else self.guidance
        return strength, guidance


class GateConfig(_Section):
    """The quality gate: per-class fidelity floors (distance of synthetic to real held-out
    images against real-vs-real, III-C's FID criterion, and against damaged real images),
    then whether the class's images do no harm on val (core.no_harm)."""

    extractor: Literal["auto", "effnet-lite0", "inception-v3-compat"] = "auto"
    inception_weights: Path | None = None
    max_images: int = Field(default=200, ge=2)  # per compared set and class
    kid_subsets: int = Field(default=50, ge=1)
    max_ratio: float = Field(default=2.0, gt=0.0)  # pass: distance <= max_ratio x real-vs-real
    max_distance: float | None = Field(default=None, gt=0.0)  # optional absolute ceiling
    # which fidelity floors fail a class: its distance beyond max_ratio x real-vs-real
    # (ratio), above blurred (blur) or noised (noise) real images' distance
    floors: list[Literal["ratio", "blur", "noise"]] = ["ratio", "blur", "noise"]
    near_duplicate: float = Field(default=0.25, ge=0.0)  # x median real nearest-neighbour gap
    knn_k: int = Field(default=3, ge=1)  # k of the k-NN precision / recall manifolds
    manifold_filter: bool = False  # keep only synthetic images inside the real manifold
    decide_by: Literal["no_harm", "fidelity"] = "no_harm"  # what the verdict rests on
    margin: float = Field(default=0.02, ge=0.0)  # non-inferiority margin, primary metric units
    harm: Literal["any", "beyond_margin"] = "any"  # fail: upper bound below 0 | below -margin
    seeds: int = Field(default=10, ge=2)  # paired seeds of the no-harm check
    judge_components: int = Field(default=32, ge=1)  # PCA dimensions of its judge's input
    inconclusive: Literal["reject", "accept"] = "reject"  # an undecided check keeps out
    blur_radius: float = Field(default=2.0, gt=0.0)  # the corrupted-real reference baselines
    noise_sigma: float = Field(default=25.0, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        gone = {"utility_seeds", "utility_folds", "utility_repeats", "proxy_components"}
        if isinstance(data, dict) and gone & set(data):
            raise ValueError(
                f"gate.{sorted(gone & set(data))[0]} is gone: the gate no longer estimates a "
                "utility on train; it asks whether a class's images do no harm on val "
                "(gate.seeds, gate.margin, gate.harm, gate.judge_components); remove it"
            )
        return data


class SweepConfig(_Section):
    """Per-class strength x guidance tuning by distance to held-out real images (StableSDG
    III-C, Table IV; DefFiller Table 2). Table IV's grid for sd15 is in profiles/sd15.yaml."""

    enabled: bool = True  # false: chosen.json records generate.strength/guidance/per_class
    strengths: list[float] = Field(default=[0.3, 0.5, 0.7], min_length=1)
    guidances: list[float] = Field(default=[1.5, 4.0], min_length=1)
    probe_images: int = Field(default=12, ge=2)  # per cell and class
    metric: Literal["fd", "kd"] = "fd"  # Frechet (FID-like, the papers') or kernel distance
    max_duplicate_fraction: float = Field(default=0.5, ge=0.0, le=1.0)  # else not eligible

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        bad = [s for s in self.strengths if not 0.0 < s <= 1.0]
        if bad:
            raise ValueError(f"strengths must be in (0, 1]; got {bad}")
        bad = [g for g in self.guidances if g < 0.0]
        if bad:
            raise ValueError(f"guidances must be >= 0; got {bad}")
        for name in ("strengths", "guidances"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        return self


# The synthetic arms a user chooses; the controls (real, the matched classical and oracle
# arms, all-train, majority) are added by the stages (core/arms.py).
CONDITIONS = arms.SYNTHETIC
CLASSIFIERS = (
    "resnet18",
    "squeezenet1_1",
    "vgg11_bn",
    "densenet121",
    "alexnet",
    "effnet_lite0_imagenet",
    "effnet_lite0_probe",
    "effnet_lite2_probe",
)


class MaskDdpmConfig(_Section):
    """DefFiller's mask producer (4.4.1: 64 px, batch 32, lr 1e-4, 200 epochs)."""

    size: int = Field(default=64, ge=16)
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=2)
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0.0)
    sample_steps: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _check(self) -> MaskDdpmConfig:
        if any(c % 8 for c in self.channels):
            raise ValueError(f"masks.ddpm.channels {self.channels} must be multiples of 8")
        if self.size % 2 ** (len(self.channels) - 1):
            raise ValueError(
                f"masks.ddpm.size = {self.size} must divide by 2 ** (levels - 1) = "
                f"{2 ** (len(self.channels) - 1)}"
            )
        return self


class MaskPerturbConfig(_Section):
    """Valvano et al.'s small random shape perturbations of real masks (4.3)."""

    max_rotation: float = Field(default=15.0, ge=0.0, le=180.0)
    max_shift: float = Field(default=0.05, ge=0.0, le=0.5)
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_alpha: float = Field(default=4.0, ge=0.0)
    elastic_sigma: float = Field(default=6.0, gt=0.0)
    area_ratio: tuple[float, float] = (0.5, 2.0)


class MaskAcceptConfig(_Section):
    """Which synthetic masks pairs may use (core.masks.MaskRange, drop_reasons)."""

    range_factor: float = Field(
        default=1.5,
        ge=1.0,
        description="a mask's area ratio within the real train masks' min / f to max x f, "
        "its 8-connected regions at most their max x f",
    )
    min_accepted: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="a method with a smaller fraction of its masks in range is dropped",
    )
    max_distance_ratio: float = Field(
        default=2.0,
        ge=1.0,
        description="a method this many times further from the val masks than the "
        "class's best is dropped",
    )


class MasksConfig(_Section):
    """New defect masks per class from the real train masks (none from val or test)."""

    methods: list[Literal["hmi", "perturb", "ddpm"]] = Field(
        default=["hmi", "perturb", "ddpm"], min_length=1
    )
    per_class: int = Field(default=64, ge=1)  # masks per method and class
    data: Literal["subset", "train"] = "subset"
    hmi_between: int = Field(default=10, ge=1)  # intermediate masks per pair (DefectSynth)
    tau: float = Field(default=0.053, gt=0.0, lt=1.0)  # area ratio: latent vs image space
    ddpm: MaskDdpmConfig = Field(default_factory=MaskDdpmConfig)
    perturb: MaskPerturbConfig = Field(default_factory=MaskPerturbConfig)
    accept: MaskAcceptConfig = Field(default_factory=MaskAcceptConfig)

    @model_validator(mode="after")
    def _check(self) -> MasksConfig:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"masks.methods lists a method twice: {self.methods}")
        return self


class SffConfig(_Section):
    """DefectSynth's similarity-based feature fusion over each generated batch (Eq. 9)."""

    enabled: bool = False
    rate: float = Field(default=0.25, gt=0.0, le=1.0)  # positions fused per latent
    base_weight: float = Field(default=0.5, ge=0.0, le=1.0)  # the rest: shared by the batch


class BlendConfig(_Section):
    """pairs.background normal / real: the defect generated into a real train image by
    blended latent diffusion (Avrahami et al. 2023; DefectSynth's normal-image inference)."""

    strength: float = Field(default=0.8, gt=0.0, le=1.0)  # share of the DDIM steps run
    dilate: int = Field(default=2, ge=0)  # px the mask grows before its latent cells change
    feather: float = Field(default=1.5, ge=0.0)  # px: the composite's edge (Gaussian sigma)
    margin: int = Field(default=2, ge=0)  # background real: px from the image's own defect


class PairsConfig(_Section):
    """Mask-conditioned generation: a ControlNet per class from the base UNet, trained on
    the class's real (conditioning, image) pairs, then image + mask pairs from the masks
    stage's masks."""

    conditioning: Literal["coloured", "driver"] = "coloured"
    # generated: the whole image from noise; normal: into a defect-free train image
    # (data.normal_classes); real: into a train image of the class, beside its own defect
    background: Literal["generated", "normal", "real"] = "generated"
    blend: BlendConfig = Field(default_factory=BlendConfig)
    per_class: int = Field(default=32, ge=1)  # pairs per class
    data: Literal["subset", "train"] = "subset"
    prompt_template: str = "a photo of a {label} defect"
    steps: int = Field(default=300, ge=1)  # ControlNet training steps (DefectSynth: lr 1e-5)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-4, gt=0.0)
    guidance: float = Field(default=3.0, ge=1.0)
    sample_steps: int = Field(default=25, ge=1)  # DDIM (DefectSynth: 20)
    conditioning_scale: float = Field(default=1.0, ge=0.0)
    generate_batch: int = Field(default=16, ge=1)  # also SFF's batch
    sae: bool = False  # DefectSynth's selective attention enhancement (Eq. 5-8)
    sff: SffConfig = Field(default_factory=SffConfig)
    grid_per_class: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check(self) -> PairsConfig:
        if "{label}" not in self.prompt_template:
            raise ValueError(
                f"pairs.prompt_template {self.prompt_template!r} must contain {{label}}"
            )
        return self


SEG_CONDITIONS = arms.ADDITIVE


def _no_repeats(section: _Section, names: tuple[str, ...]) -> None:
    """Lists where a value twice would run the same thing twice (seeds, conditions, ...)."""
    for name in names:
        values = getattr(section, name)
        if len(set(values)) != len(values):
            raise ValueError(f"{name} lists a value twice: {values}")


def _value_protocol(data: Any, section: str) -> Any:
    """Keys of the old protocol, refused with what replaced them: epochs (now steps, the
    equal budget) and the controls in `conditions` (now always run)."""
    if not isinstance(data, dict):
        return data
    if "epochs" in data:
        raise ValueError(
            f"{section}.epochs was replaced by {section}.steps: every condition of a "
            "comparison trains for the same number of optimizer steps (an epoch is longer "
            "for a condition with more images); set steps instead"
        )
    listed = data.get("conditions")
    controls = [v for v in listed or [] if v in (arms.REAL, arms.classical_of(arms.GATED))]
    if controls:
        raise ValueError(
            f"{section}.conditions lists {controls}: list only the synthetic arms; real and "
            "the matched real+classical / real+oracle controls always run"
        )
    return data


# segment's and detect's class_balance: one switch for the U-Net's and the detector's
# batches (train.class_balance also has loss weights, which torchvision's detection
# losses do not take)
_BATCH_BALANCE = Field(
    default="none",
    description="how training treats an imbalanced train set: sampler (batches drawn "
    "class-balanced by each image's class, core.train_budget.batch_order) | none; the "
    "compared arms add as many images per class, and the shared datasets are balanced",
)


class SegmentConfig(_Section):
    """Segmentation on real vs real + synthetic pairs (DefFiller 4.4.3), and the COCO export."""

    conditions: list[Literal[SEG_CONDITIONS]] = Field(
        default=list(arms.ADDITIVE)
    )  # the synthetic arms; real, real+classical[-ungated] (and oracles) always run
    oracle: bool = True  # real+oracle arms and all-train (need train pairs outside the subset)
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    steps: int = Field(default=300, ge=1)  # optimizer steps per U-Net, every condition
    evals: int = Field(default=6, ge=1, description="val Dice checks; the best weights are scored")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW's peak learning rate")
    weight_decay: float = Field(default=1e-4, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = Field(default=0.05, ge=0.0, lt=1.0, description="fraction of the steps")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=2)
    export: Literal["gated", "ungated"] = "gated"  # which synthetic pairs the COCO train has
    class_balance: Literal["none", "sampler"] = _BATCH_BALANCE
    workers: int = Field(default=2, ge=1)  # U-Nets trained at once, one CPU thread each

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return _value_protocol(data, "segment")

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        _no_repeats(self, ("conditions", "seeds"))
        return self


DETECTORS = (
    "fasterrcnn_resnet18",
    "fasterrcnn_effnet_lite0_imagenet",
    "maskrcnn_resnet18",
    "maskrcnn_effnet_lite0_imagenet",
)


class DetectConfig(_Section):
    """Defect detectors on real vs real + synthetic images (core.detect, stages.detect)."""

    models: list[Literal[DETECTORS]] = Field(
        default=["fasterrcnn_effnet_lite0_imagenet"], min_length=1
    )  # the ImageNet trunk: a from-scratch trunk does not converge at a CPU's budget
    conditions: list[Literal[SEG_CONDITIONS]] = Field(
        default=list(arms.ADDITIVE)
    )  # the synthetic arms; real, real+classical[-ungated] (and oracles) always run
    oracle: bool = True  # real+oracle arms and all-train
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    steps: int = Field(default=200, ge=1)  # optimizer steps per detector, every condition
    evals: int = Field(default=4, ge=1)  # val mAP@.5 checks; the best weights are scored
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=0.02, gt=0.0, description="SGD's peak learning rate (momentum 0.9)")
    weight_decay: float = Field(default=1e-4, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = Field(default=0.05, ge=0.0, lt=1.0, description="fraction of the steps")
    # img2img images inherit the parent's boxes/masks only up to this strength
    parent_boxes_up_to: float = Field(default=0.5, ge=0.0, le=1.0)
    synthetic: Literal["both", "images", "pairs"] = "both"  # which branch's images
    class_balance: Literal["none", "sampler"] = _BATCH_BALANCE

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return _value_protocol(data, "detect")

    @model_validator(mode="after")
    def _check(self) -> DetectConfig:
        _no_repeats(self, ("models", "conditions", "seeds"))
        return self


class ClassicalConfig(_Section):
    """The classical control's recipe (core.augment): what `real+classical` arms and the
    gate's no-harm check add. Geometric transforms move masks and boxes with the image."""

    flips: bool = Field(default=True, description="horizontal and vertical flips, p 0.5 each")
    quarter_turns: bool = Field(
        default=False, description="rotations by multiples of 90 degrees (square images)"
    )
    rotate: float = Field(
        default=15.0,
        ge=0.0,
        le=45.0,
        description="+- degrees, border reflected; off for box-only detection data",
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.8, 1.0), description="random resized crop: fraction of the area kept"
    )
    brightness: float = Field(default=0.2, ge=0.0, le=1.0, description="+- brightness")
    contrast: float = Field(default=0.2, ge=0.0, le=1.0, description="+- contrast")
    blur_p: float = Field(default=0.3, ge=0.0, le=1.0, description="Gaussian blur probability")
    blur_sigma: tuple[float, float] = Field(default=(0.3, 1.0), description="blur sigma, px")
    noise_p: float = Field(default=0.3, ge=0.0, le=1.0, description="Gaussian noise probability")
    noise_sigma: tuple[float, float] = Field(
        default=(2.0, 8.0), description="noise sigma, grey levels"
    )

    @model_validator(mode="after")
    def _check(self) -> ClassicalConfig:
        for key in ("crop_scale", "blur_sigma", "noise_sigma"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi or (key == "crop_scale" and hi > 1.0):
                raise ValueError(
                    f"classical.{key} = [{lo}, {hi}]: give [low, high] with 0 < low <= high"
                    + (" <= 1" if key == "crop_scale" else "")
                )
        return self


class CopyPasteConfig(_Section):
    """The copy-paste control of the mask branch (core.copypaste): `real+copy-paste`
    arms in segment and detect, as many pasted real defects per class as the synthetic
    arm adds pairs."""

    enabled: bool = Field(default=True, description="run the copy-paste arms")
    feather: float = Field(default=1.5, gt=0.0, description="the edge's alpha blur sigma, px")
    margin: int = Field(default=2, ge=0, description="px kept from the background's defect")


PRIMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


class TrainConfig(_Section):
    """Defect classifiers on real vs real+synthetic (StableSDG III-D / IV-C protocol)."""

    # the first model's comparisons give the answer: the judge, a probe on a network none
    # of the generator's instruments uses (core.classify.PROBES)
    models: list[Literal[CLASSIFIERS]] = Field(default=["effnet_lite2_probe"], min_length=1)
    conditions: list[Literal[CONDITIONS]] = Field(
        default=list(arms.SYNTHETIC)
    )  # the synthetic arms; the controls always run (core/arms.py)
    oracle: bool = True  # real+oracle arms and all-train (need train images outside the subset)
    seeds: list[int] = Field(default=[0, 1, 2, 3, 4], min_length=1)
    steps: int = Field(default=1000, ge=1)  # optimizer steps per classifier, every condition
    evals: int = Field(default=20, ge=1)  # val checks, evenly spaced; the best one is kept
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0.0, description="AdamW's peak learning rate")
    weight_decay: float = Field(default=0.05, ge=0.0, description="AdamW's decoupled decay")
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="cosine: linear warmup, then cosine decay to 0"
    )
    warmup: float = Field(default=0.05, ge=0.0, lt=1.0, description="warmup, fraction of steps")
    primary: Literal[("auto", *PRIMARY_METRICS)] = Field(
        default="auto",
        description="the metric verdicts use and val selects by; auto: accuracy when the "
        "test split's classes are balanced (core.classify.primary_metric), else balanced "
        "accuracy",
    )
    class_balance: Literal["none", "weights", "sampler"] = Field(
        default="sampler",
        description="how training treats an imbalanced train set (core.classify.fit): "
        "sampler (batches drawn class-balanced) | weights (loss weighted by inverse class "
        "frequency) | none; sampler measured best on val "
        "(experiments/expansion/results/*/class-balance*.md)",
    )
    rotation: float = Field(default=10.0, ge=0.0, le=180.0)  # +- degrees
    flips: bool = True  # horizontal and vertical
    views: int = Field(
        default=1,
        ge=1,
        description="the probes: feature vectors per train image, the image and "
        "views - 1 augmented copies (rotation, flips), computed once by the frozen trunk; "
        "1 (the image alone) keeps the probe's augmentation out of the classical recipe, "
        "so the classical arm measures the recipe",
    )
    image_size: int | None = Field(default=None, ge=16)  # null: as preprocessed
    workers: int = Field(default=2, ge=1)  # runs trained at once, one CPU thread each

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return _value_protocol(data, "train")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        _no_repeats(self, ("models", "conditions", "seeds"))
        return self


class TrackingConfig(_Section):
    enabled: bool = True
    experiment: str = Field(default="defectgen", min_length=1)


class Resources(_Section):
    """Kubernetes requests and limits of one kind of task (quantities as kubectl writes them)."""

    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2G"
    memory_limit: str = "8G"


class Toleration(_Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class ClusterConfig(_Section):
    """How the KFP pipeline lands on a cluster; read when compiling it, by no stage.

    GPU tasks (masks, pairs, pairs_gate, segment, base, finetune, sweep, generate, gate,
    train) request accelerators and carry the GPU node selector and tolerations; CPU
    tasks carry neither, so they stay off tainted GPU node pools.
    """

    cpu_image: str = Field(default="defectgen:cpu", min_length=1)
    gpu_image: str = Field(default="defectgen:gpu", min_length=1)
    parallelism: int = Field(default=4, ge=0)  # classes expanded at once (0: no limit)
    accelerator_type: str = Field(default="nvidia.com/gpu", min_length=1)
    accelerator_limit: int = Field(default=1, ge=1)
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu")]
    )
    cpu_node_selector: dict[str, str] = Field(default_factory=dict)
    cpu: Resources = Field(default_factory=Resources)
    gpu: Resources = Field(
        default_factory=lambda: Resources(
            cpu_request="4", cpu_limit="8", memory_request="16G", memory_limit="48G"
        )
    )
    shm_size: str = "8Gi"  # /dev/shm for data loaders on GPU tasks
    retries: int = Field(default=2, ge=0)  # GPU tasks (preemptible nodes, transient OOM)
    backoff: str = "60s"
    backoff_factor: float = Field(default=2.0, ge=1.0)
    backoff_max: str = "1800s"
    cpu_timeout_s: int = Field(default=3600, ge=0)  # 0: none
    gpu_timeout_s: int = Field(default=6 * 3600, ge=0)
    # The raw dataset's PersistentVolumeClaim, mounted into the ingest pod at data_mount
    # (the pipeline's `source` names a folder under it); null: no volume mounted.
    data_pvc: str | None = "defectgen-data"
    data_mount: str = Field(default="/mnt/defectgen-data", pattern=r"^/")
    mlflow_secret: str | None = "defectgen-mlflow"  # null: no secret mounted
    mlflow_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "tracking_uri": "MLFLOW_TRACKING_URI",
            "username": "MLFLOW_TRACKING_USERNAME",
            "password": "MLFLOW_TRACKING_PASSWORD",
        }
    )


class Params(_Section):
    """The whole of params.yaml."""

    seed: int = Field(default=1234, ge=0)
    data: DataConfig
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    base: BaseConfig = Field(default_factory=BaseConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    masks: MasksConfig = Field(default_factory=MasksConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    classical: ClassicalConfig = Field(default_factory=ClassicalConfig)
    copy_paste: CopyPasteConfig = Field(default_factory=CopyPasteConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    # the keys these params carry: ALL, or one KFP task's own keys (`from_keyed`)
    _given: tuple[str, ...] = PrivateAttr(default=(ALL,))

    @model_validator(mode="after")
    def _normal_not_synthesised(self) -> Params:
        listed = set(self.finetune.classes or []) & set(self.data.normal_classes)
        if listed:
            raise ValueError(
                f"finetune.classes lists {sorted(listed)}, which data.normal_classes calls "
                "defect-free: a normal class gets no adapter; remove it from one of the two"
            )
        return self

    def synthesised(self, labels: list[str]) -> list[str]:
        """The classes that get adapters, masks and synthetic images: finetune.classes
        (else every class) without data.normal_classes."""
        chosen = self.finetune.classes or labels
        return [c for c in labels if c in chosen and c not in self.data.normal_classes]

    @property
    def given(self) -> tuple[str, ...]:
        """The keys these params carry: (ALL,) for a params file, a task's own keys for
        the params a KFP task receives (`from_keyed`)."""
        return self._given

    def carries(self, key: str) -> bool:
        """Whether `key` (a section, a dotted key or ALL) holds its given value here, not
        a default standing in for a key this task was not handed."""
        given = self._given
        if ALL in given or key in given or key.split(".")[0] in given:
            return True
        if key == ALL:
            return False
        section = type(self).model_fields[key].annotation if "." not in key else None
        return (
            isinstance(section, type)
            and issubclass(section, BaseModel)
            and all(f"{key}.{f}" in given for f in section.model_fields)
        )

    def keyed(self, *keys: str) -> dict[str, Any]:
        """The values of `keys`, each a section ("train"), a dotted key ("generate.mode")
        or ALL (every section but `cluster`, which says where stages run, not what they
        compute), as JSON-ready values: what a stage declares it reads."""
        known = [k for k in keys if k == ALL or k.split(".")[0] in type(self).model_fields]
        lacking = [k for k in known if not self.carries(k)]
        if lacking:
            raise KeyError(
                f"these params carry only {', '.join(self._given)} (one task's keys), not "
                f"{', '.join(lacking)}"
            )
        dumped = self.model_dump(mode="json")
        if ALL in keys:
            keys = tuple(k for k in type(self).model_fields if k != "cluster")
        out = {}
        for key in keys:
            value: Any = dumped
            for part in key.split("."):
                if not isinstance(value, dict) or part not in value:
                    raise KeyError(f"params have no key {key!r}")
                value = value[part]
            out[key] = value
        return out

    @classmethod
    def from_keyed(cls, values: dict[str, Any], source: str = "params") -> Params:
        """Params that carry only `values`, what `keyed` returned for some keys (a KFP
        task's params input: pipelines.defectgen_pipeline); every other key keeps its
        default, and `keyed` and a stage's view (scoped) refuse it.

        Each value is validated by its own field's type. The sections' checks across keys
        ran when the whole params were loaded (pipelines.compile refuses invalid params);
        on part of a section they would judge a user's value against a default.
        """
        whole: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            name, _, field = key.partition(".")
            section = cls.model_fields[name].annotation if name in cls.model_fields else None
            if section is None or (field and field not in section.model_fields):
                raise ConfigError(f"{source}: params have no key {key!r}")
            if field:
                parts.setdefault(name, {})[field] = _validated(section, field, value, source)
            else:
                whole[name] = _validated(cls, name, value, source)
        for name, fields in parts.items():  # a key of a section given whole is its value
            if name not in whole:
                whole[name] = cls.model_fields[name].annotation.model_construct(**fields)
        whole.setdefault("data", DataConfig.model_construct())  # the one required section
        params = cls.model_construct(**whole)
        everything = [k for k in cls.model_fields if k != "cluster"]
        params._given = (ALL,) if set(values) >= set(everything) else tuple(values)
        return params

    def section_hash(self, *keys: str) -> str:
        """Short sha256 of the named sections or dotted keys (none: ALL), for resume keys,
        tags and provenance."""
        blob = json.dumps(self.keyed(*(keys or (ALL,))), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _validated(model: type[BaseModel], field: str, value: Any, source: str) -> Any:
    """`value` validated as `model`'s field `field` (its type and constraints)."""
    info = model.model_fields[field]
    kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        where = f"{SECTION_NAME.get(model, '')}{field}"
        reasons = "; ".join(
            f"{'.'.join(map(str, (where, *e['loc'])))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: invalid parameters: {reasons}") from None


# each section's class -> "<its key>." (the prefix of its keys' names in messages)
SECTION_NAME = {
    f.annotation: f"{name}."
    for name, f in Params.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
}


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at the parent of `loc`, walking nested section models."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        current = field.annotation
    return sorted(current.model_fields)


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters:"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p != "__root__")
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Params, loc)) or "(none)"
            lines.append(
                f"  - {key}: unknown key (value {err['input']!r}); allowed keys: {allowed}"
            )
        elif err["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = err.get("input")
            if isinstance(shown, dict):
                lines.append(f"  - {key}: {msg}")
            else:
                lines.append(f"  - {key} = {shown!r}: {msg}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-parsed mapping; raises ConfigError naming key, value and rule."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {raw!r}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


# Sections that take exactly one of some keys (SubsetConfig): an override naming one
# unsets the others, so `subset: {alpha: 0.4}` over params.yaml's per_class means alpha.
EXCLUSIVE = {("preprocess", "subset"): {"alpha", "per_class"}}


def merge_overrides(base: dict, over: dict, _at: tuple[str, ...] = ()) -> dict:
    """`base` with `over`'s keys replaced, recursively into mappings: a profile written
    as the few keys it changes in params.yaml."""
    out = dict(base)
    group = EXCLUSIVE.get(_at, set())
    if len(group & set(over)) == 1:
        out.update(dict.fromkeys(group - set(over)))
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_overrides(out[key], value, (*_at, key)) if nested else value
    return out


def apply_profile(params_path: Path | str, profile_path: Path | str) -> Params:
    """Write params.yaml + a profile's overrides (profiles/<name>.yaml: the few keys it
    changes) back to `params_path`, its comments and order kept; validated first, so a
    profile with an unknown key or a bad value changes nothing."""
    from ruamel.yaml import YAML

    params_path, profile_path = Path(params_path), Path(profile_path)
    if not profile_path.is_file():
        raise ConfigError(f"{profile_path}: profile not found (see profiles/)")
    try:
        over = yaml.safe_load(profile_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{profile_path}: not valid YAML: {exc}") from None
    load_params(params_path)  # params.yaml itself must be valid
    raw = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    params = parse_params(merge_overrides(raw, over), f"{params_path} + {profile_path}")
    rt = YAML()  # round trip: comments and key order stay
    rt.width = 4096
    doc = rt.load(params_path.read_text(encoding="utf-8"))

    def assign(node, values: dict, at: tuple[str, ...] = ()) -> None:
        group = EXCLUSIVE.get(at, set())
        if len(group & set(values)) == 1:
            for other in group - set(values):
                node[other] = None  # as merge_overrides: naming one unsets the others
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                assign(node[key], value, (*at, key))
            else:
                node[key] = value

    assign(doc, over)
    tmp = params_path.with_name(f".{params_path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        rt.dump(doc, fh)
    tmp.replace(params_path)
    return params


def load_params(path: Path | str) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; pass --params PATH to an existing file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
