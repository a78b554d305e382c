#!/usr/bin/env python3
"""Tracking with and without EBM refinement, on generated shapes video, from the same detections.

    python -m tools.benchmarks.tracking [--num-seqs 6 --num-frames 80 --long-frames 600 --check-runner]

Uses the 2D detector + EBM of ``tools/demo.sh`` (``work_dirs/demo/ebm/last_checkpoint``; the video's
objects are the same shapes), or trains small ones into ``work_dirs/tracking_bench`` when absent;
``mmdet.apis.init_detector`` loads them. Each frame runs the detector once
(``EBMRefineDetector.detect``); its features and detections feed every variant:

* MOT (mmdet's ByteTracker with the thresholds of ``configs/bytetrack_ebm_shapes-video.py``),
  scored by mmdet's ``MOTChallengeMetric`` (trackeval: HOTA / CLEAR / Identity, MOTChallenge
  preprocessing) and cross-checked with motmetrics (``tracking_metrics.py``):
  ``ByteTrack`` (detector boxes), ``+ EBM dets`` (detections refined, ``EBMRefineDetector.refine``),
  ``+ EBM tracks`` (Kalman-predicted track boxes refined before association, ``EBMByteTracker``),
  ``+ EBM dets + tracks``.
* Single object, OPE (each GT track initialised with its first box, then tracked alone): a
  constant-velocity tracker alone (a static box), ``+ EBM`` (the prediction refined each frame by
  ``EBMBoxRefiner``), ``+ dets`` (the best-overlapping detection replaces the prediction), ``+ dets
  + EBM``; success AUC over 21 IoU thresholds (``tracking_sot.py``).
* Memory: the mmdet MOT model (``EBMByteTrack``, both refinements; ``mmdet.apis.init_track_model``
  and ``inference_mot``) over one long sequence, frame by frame; resident memory sampled along the way.

Writes ``docs/figures/tracking.md`` (and ``.json``) with the exact command; ``--render-only``
rewrites the ``.md`` from the ``.json``.
"""
import argparse
import copy
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.apis import inference_mot, init_detector, init_track_model
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import get_test_pipeline_cfg
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint
from mmengine.structures import InstanceData

from ebm_det.evaluation import best_overlaps
from ebm_det.tracking import EBMBoxRefiner
from tools.benchmarks.common import command_line, rss_mb, run_demo
from tools.benchmarks.tracking_metrics import mot_challenge_metrics, motmetrics_summary, read_mot_txt, seq_length
from tools.benchmarks.tracking_report import render
from tools.benchmarks.tracking_sot import ConstantVelocityTracker, success_auc

ROOT = Path(__file__).resolve().parents[2]
MOT_CONFIG = 'configs/bytetrack_ebm_shapes-video.py'  # the tracker settings, and the memory / Runner runs
FRAME_SIZE = 256  # px, side of the generated frames
SPLIT, LONG_SPLIT = 'val', 'long'  # generated splits: the scored sequences, the memory run's one
SHAPES_TRAIN_IMAGES, SHAPES_VAL_IMAGES = 300, 20  # still images the small models train on when none exist
GT_HIT_IOU = 0.3  # a detection that overlaps a GT object this much found it (the detections table)
MEMORY_SAMPLES = 12  # RSS samples along the long sequence (plus the first and the last frame)
PEDESTRIAN = 1  # MOT class of scored objects (others are don't-care)
# ByteTrack's stock thresholds expect stronger scores than the demo-scale detector gives: it also
# runs with these (high / low detection score, new-track score)
LOW_THRESHOLDS = dict(obj_score_thrs=dict(high=0.3, low=0.1), init_track_thr=0.4)


class DetectionSource(NamedTuple):
    detections: str  # 'detector' (the model's own) or 'noisy GT' (NoisyGTDetector)
    tracker_overrides: dict  # over the MOT config's tracker settings


class MOTVariant(NamedTuple):
    name: str
    refine_dets: bool
    refine_tracks: bool


class SOTVariant(NamedTuple):
    name: str
    refine: bool  # EBMBoxRefiner on the prediction, and refined detections
    use_dets: bool


SOURCES = {
    'detector': DetectionSource('detector', {}),
    'detector, low thr': DetectionSource('detector', LOW_THRESHOLDS),
    'noisy GT': DetectionSource('noisy GT', {}),
}
MOT_VARIANTS = (MOTVariant('ByteTrack', False, False), MOTVariant('+ EBM dets', True, False),
                MOTVariant('+ EBM tracks', False, True), MOTVariant('+ EBM dets + tracks', True, True))
SOT_VARIANTS = (SOTVariant('constant velocity', False, False), SOTVariant('+ EBM', True, False),
                SOTVariant('+ dets', False, True), SOTVariant('+ dets + EBM', True, True))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------ the models
def trained_ebm(work_dir: str) -> Optional[Tuple[str, str]]:
    """(config, checkpoint) the Runner left in ``work_dir`` (its dumped config), or None."""
    last = osp.join(work_dir, 'last_checkpoint')
    configs = sorted(Path(work_dir).glob('*.py'))
    if not (osp.exists(last) and configs):
        return None
    return str(configs[0]), Path(last).read_text().strip()


def train_small_models(args) -> None:
    """A detector and its EBM head on generated still images (the hard kind), into
    ``args.train_dir``: ``tools/demo.sh``'s training (seeded)."""
    run_demo(DATA=args.shapes_data, WORK=args.train_dir, NUM_TRAIN=SHAPES_TRAIN_IMAGES, NUM_VAL=SHAPES_VAL_IMAGES,
             DIFFICULTY='hard', DET_ITERS=args.train_det_iters, EBM_ITERS=args.train_ebm_iters, RUN_TEST=0)


def find_or_train(args) -> Tuple[str, str, str]:
    """(config path, checkpoint, origin) of a trained EBMRefineDetector: the demo's, else small new ones."""
    found = trained_ebm(args.ebm_work_dir) or trained_ebm(osp.join(args.train_dir, 'ebm'))
    if found:
        return (*found, 'found')
    print(f'[tracking] no checkpoint in {args.ebm_work_dir}: training small ones in {args.train_dir}', flush=True)
    train_small_models(args)
    return (*trained_ebm(osp.join(args.train_dir, 'ebm')), 'trained')


def generate_video(root: Path, split: str, num_seqs: int, num_frames: int, seed: int) -> Path:
    """``python -m ebm_det.synthetic.mot_video`` (unless done); the split's folder of sequences."""
    if not (root / 'annotations' / f'{split}_cocoformat.json').exists():
        subprocess.run([sys.executable, '-m', 'ebm_det.synthetic.mot_video', '--out', str(root), '--splits', split,
                        '--num-seqs', str(num_seqs), '--num-frames', str(num_frames), '--size', str(FRAME_SIZE),
                        '--seed', str(seed)], cwd=ROOT, check=True)
    return root / split


# ------------------------------------------------------------------------------- the detections
@dataclass(frozen=True)
class NoisyGTDetector:
    """Simulated detections from GT rows (the ``noisy GT`` source), which isolate the trackers and
    the EBM from the detector's quality.

    A pedestrian-class object is found with probability ``find_prob_base + visibility`` (at most
    ``max_find_prob``), a don't-care one with ``dont_care_find_prob``; its box is jittered (centre
    N(0, ``centre_sigma``) of its size, log-size N(0, ``log_size_sigma``)); its score is
    U(``high_scores``) when at least ``confident_visibility`` visible, else U(``low_scores``)
    (ByteTrack's second association). Poisson(``false_positives_per_frame``) false positives per
    frame, sides U(``false_positive_sides``) px, score U(``false_positive_scores``). Labels are the
    shape classes (the EBM head is class-conditional).
    """
    find_prob_base: float = 0.5
    max_find_prob: float = 0.97
    dont_care_find_prob: float = 0.3
    centre_sigma: float = 0.07
    log_size_sigma: float = 0.1
    confident_visibility: float = 0.5
    high_scores: Tuple[float, float] = (0.65, 0.95)
    low_scores: Tuple[float, float] = (0.15, 0.65)
    false_positives_per_frame: float = 0.5
    false_positive_sides: Tuple[float, float] = (15.0, 60.0)
    false_positive_scores: Tuple[float, float] = (0.1, 0.7)

    def __call__(self, rng: np.random.Generator, gt_rows: np.ndarray, labels: Dict[int, int], size: int,
                 num_classes: int) -> InstanceData:
        """Detections of one ``size`` px frame from its (N, 9) GT rows; ``labels``: track id -> class."""
        boxes, scores, labs = [], [], []
        for r in gt_rows:
            vis, pedestrian = r[8], int(r[7]) == PEDESTRIAN
            find_prob = min(self.find_prob_base + vis, self.max_find_prob) if pedestrian else self.dont_care_find_prob
            if rng.random() > find_prob:
                continue
            boxes.append(self._jitter(rng, r[2:6]))
            confident = vis >= self.confident_visibility and pedestrian
            scores.append(rng.uniform(*(self.high_scores if confident else self.low_scores)))
            labs.append(labels.get(int(r[1]), 0))
        for _ in range(rng.poisson(self.false_positives_per_frame)):
            w, h = rng.uniform(*self.false_positive_sides, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(*self.false_positive_scores))
            labs.append(int(rng.integers(num_classes)))
        boxes = np.clip(np.array(boxes, dtype=np.float32).reshape(-1, 4), 0, size)
        return InstanceData(bboxes=torch.from_numpy(boxes), scores=torch.tensor(scores, dtype=torch.float32),
                            labels=torch.tensor(labs, dtype=torch.long))

    def _jitter(self, rng: np.random.Generator, xywh: np.ndarray) -> List[float]:
        x, y, w, h = xywh
        cx = x + w / 2 + rng.normal(0, self.centre_sigma) * w
        cy = y + h / 2 + rng.normal(0, self.centre_sigma) * h
        w, h = w * np.exp(rng.normal(0, self.log_size_sigma)), h * np.exp(rng.normal(0, self.log_size_sigma))
        return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@dataclass
class FrameDetections:
    """One frame through the detector: its metainfo, its neck features and, per detection source,
    the raw and the EBM-refined detections (the same raw boxes for every tracker variant).

    Frames are fed at their own size (scale factor 1): network-input and image pixels coincide.
    """
    meta: dict
    feats: Tuple[torch.Tensor, ...]
    dets: Dict[str, Tuple[InstanceData, InstanceData]] = field(default_factory=dict)

    @property
    def img_shape(self) -> Tuple[int, int]:
        return tuple(self.meta['img_shape'][:2])

    def add_source(self, model, name: str, instances: InstanceData) -> None:
        """``instances`` and a copy refined by ``model.refine`` on this frame's features."""
        refined = DetDataSample(metainfo=self.meta)
        refined.pred_instances = copy.deepcopy(instances)
        model.refine(self.feats, [refined])
        self.dets[name] = (instances, refined.pred_instances)

    def sample(self, source: str, refined: bool) -> DetDataSample:
        """The data sample a tracker gets: the frame's raw or refined detections of ``source``."""
        p = self.dets[source][int(refined)]
        s = DetDataSample(metainfo=self.meta)
        s.pred_instances = InstanceData(bboxes=p.bboxes.clone(), scores=p.scores.clone(), labels=p.labels.clone())
        return s


def frame_pipeline(cfg) -> Compose:
    """The test pipeline of the detector's config, reading a frame array, as mmdet's
    ``inference_detector`` builds it (in the config's default scope, as ``init_detector`` sets it)."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    pipeline = get_test_pipeline_cfg(cfg.copy())
    pipeline[0].type = 'mmdet.LoadImageFromNDArray'
    return Compose(pipeline)


@torch.no_grad()
def detect_frame(model, pipeline: Compose, image: np.ndarray, frame_id: int) -> FrameDetections:
    """The detector's raw detections and neck features of one (H, W, 3) BGR frame through
    ``pipeline`` (``frame_pipeline``), in one pass; its detections also refined (source
    ``detector``)."""
    data = pipeline(dict(img=image, img_id=frame_id))
    if tuple(data['data_samples'].scale_factor) != (1.0, 1.0):  # FrameDetections: image pixels = network input's
        raise ValueError(f"a {image.shape[1]}x{image.shape[0]} frame is resized by the config's test pipeline; "
                         f'generate the video at its test scale ({FRAME_SIZE} px)')
    data['data_samples'].set_metainfo(dict(frame_id=frame_id))
    data = model.data_preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    results, feats = model.detect(data['inputs'], data['data_samples'], rescale=False, refine=False)
    frame = FrameDetections(dict(results[0].metainfo), feats)
    frame.add_source(model, 'detector', results[0].pred_instances)
    return frame


# ------------------------------------------------------------------------------------- the loop
@dataclass
class SequenceGT:
    """A generated sequence's ground truth."""
    rows: np.ndarray  # (N, 9) gt.txt rows
    labels: Dict[int, int]  # track id -> shape class (gt/labels.txt)
    length: int
    first: Dict[int, int]  # track id -> first and last frame where it is a scored object
    last: Dict[int, int]

    @classmethod
    def load(cls, seq_dir: Path) -> 'SequenceGT':
        rows = read_mot_txt(seq_dir / 'gt' / 'gt.txt')
        labels = {int(a): int(b) for a, b in np.loadtxt(seq_dir / 'gt' / 'labels.txt', delimiter=',', ndmin=2)}
        scored = rows[rows[:, 7] == PEDESTRIAN]
        ids = np.unique(scored[:, 1])
        first = {int(i): int(scored[scored[:, 1] == i, 0].min()) for i in ids}
        last = {int(i): int(scored[scored[:, 1] == i, 0].max()) for i in ids}
        return cls(rows, labels, seq_length(seq_dir), first, last)

    def boxes(self, t: int) -> Dict[int, np.ndarray]:
        """Track id -> (4,) x1y1x2y2 GT box of the scored objects of frame ``t`` (1-based)."""
        rows = self.rows[(self.rows[:, 0] == t) & (self.rows[:, 7] == PEDESTRIAN)]
        return {int(r[1]): np.array([r[2], r[3], r[2] + r[4], r[3] + r[5]]) for r in rows}


@dataclass
class Tallies:
    """What the loop collects over all sequences."""
    mot: Dict[Tuple[str, str], Dict[str, np.ndarray]]  # (source, variant) -> seq -> track rows
    sot_ious: Dict[str, List[float]]  # SOT variant -> IoU to GT per scored frame and target
    det_ious: Dict[Tuple[str, bool], List[float]]  # (source, refined) -> IoU of each GT's best detection
    frames: int = 0
    seconds: float = 0.0

    @classmethod
    def empty(cls) -> 'Tallies':
        det_sources = sorted({s.detections for s in SOURCES.values()})
        return cls(mot={(src, v.name): {} for src in SOURCES for v in MOT_VARIANTS},
                   sot_ious={v.name: [] for v in SOT_VARIANTS},
                   det_ious={(src, r): [] for src in det_sources for r in (False, True)})


def build_tracker(tracker_cfg: dict, refiner: EBMBoxRefiner, refine_tracks: bool, overrides: dict):
    """The MOT config's tracker (an ``EBMByteTracker``) with ``overrides``, refining with ``refiner``
    when ``refine_tracks``."""
    cfg = {**copy.deepcopy(tracker_cfg), **copy.deepcopy(overrides)}
    cfg['ebm'] = dict(cfg.get('ebm') or {}, enabled=refine_tracks)
    tracker = MODELS.build(cfg)
    tracker.bind_ebm(refiner)
    return tracker


def track_rows(t: int, tracks: InstanceData) -> List[list]:
    """MOT result rows ``frame, id (1-based), x, y, w, h, score`` of a tracker's output on frame ``t``."""
    b = tracks.bboxes.cpu().numpy()
    return [[t, int(tracks.instances_id[k]) + 1, b[k, 0], b[k, 1], b[k, 2] - b[k, 0], b[k, 3] - b[k, 1],
             float(tracks.scores[k])] for k in range(len(tracks))]


def score_detections(frame: FrameDetections, gt_boxes: torch.Tensor, det_ious: dict) -> None:
    """How far refinement moves each source's boxes towards the GT: the IoU of each GT object's best
    raw detection (if >= GT_HIT_IOU) and of the same detection refined."""
    for src in {k for k, _ in det_ious}:
        raw, ref = frame.dets[src]
        if not (len(raw) and len(gt_boxes)):
            continue
        best, j = best_overlaps(gt_boxes, raw.bboxes.float())
        hit = best >= GT_HIT_IOU
        det_ious[(src, False)] += best[hit].tolist()
        det_ious[(src, True)] += bbox_overlaps(ref.bboxes[j[hit]].float(), gt_boxes[hit], is_aligned=True).tolist()


def step_single_object(trackers: Dict[str, ConstantVelocityTracker], frame: FrameDetections, gt: SequenceGT,
                       t: int, det_thr: float, sot_ious: dict) -> None:
    """One OPE frame for every SOT variant: predict (and correct), score against the GT, start the
    targets first seen now, end those last seen now."""
    gt_t = gt.boxes(t)
    for v in SOT_VARIANTS:
        sot = trackers[v.name]
        dets = frame.dets['detector'][int(v.refine)]
        pred = sot.step(frame.feats, frame.img_shape, dets.bboxes[dets.scores >= det_thr] if v.use_dets else None)
        ids = [i for i in pred if i in gt_t]
        if ids:
            boxes = torch.stack([pred[i] for i in ids]).double()
            truth = torch.from_numpy(np.stack([gt_t[i] for i in ids]))
            sot_ious[v.name] += bbox_overlaps(boxes, truth, is_aligned=True).tolist()
        new = [i for i in gt_t if gt.first[i] == t]
        if new:
            sot.add(new, torch.tensor(np.stack([gt_t[i] for i in new])).float(), feats=frame.feats)
        sot.remove([i for i in sot.ids if gt.last[i] <= t])


def run_sequence(model, refiner: EBMBoxRefiner, tracker_cfg: dict, seq_dir: Path, seq_index: int, seed: int,
                 sot_det_thr: float, tallies: Tallies) -> None:
    """Every MOT variant on every detection source and every OPE variant over one sequence, one
    detector pass per frame; the noisy GT of frame ``t`` draws from the seed ``(seed, seq_index, t)``."""
    gt = SequenceGT.load(seq_dir)
    pipeline = frame_pipeline(model.cfg)
    noisy_gt = NoisyGTDetector()
    mot_trackers = [(src, v, build_tracker(tracker_cfg, refiner, v.refine_tracks, s.tracker_overrides))
                    for src, s in SOURCES.items() for v in MOT_VARIANTS]
    rows = {(src, v.name): [] for src, v, _ in mot_trackers}
    sot_trackers = {v.name: ConstantVelocityTracker(refiner if v.refine else None) for v in SOT_VARIANTS}
    for t in range(1, gt.length + 1):
        image = cv2.imread(str(seq_dir / 'img1' / f'{t:06d}.jpg'))
        frame = detect_frame(model, pipeline, image, t - 1)
        rng = np.random.default_rng([seed, seq_index, t])
        frame.add_source(model, 'noisy GT', noisy_gt(rng, gt.rows[gt.rows[:, 0] == t], gt.labels, image.shape[1],
                                                     model.ebm_head.num_classes))
        for src, v, tracker in mot_trackers:
            out = tracker.track(frame.sample(SOURCES[src].detections, v.refine_dets), feats=frame.feats)
            rows[(src, v.name)] += track_rows(t, out)
        gt_boxes = torch.from_numpy(np.array(list(gt.boxes(t).values()), dtype=np.float32).reshape(-1, 4))
        score_detections(frame, gt_boxes, tallies.det_ious)
        step_single_object(sot_trackers, frame, gt, t, sot_det_thr, tallies.sot_ious)
        tallies.frames += 1
    for k, r in rows.items():
        tallies.mot[k][seq_dir.name] = np.array(r).reshape(-1, 7)


def run_sequences(model, refiner: EBMBoxRefiner, tracker_cfg: dict, split_dir: Path, seqs: Sequence[str],
                  seed: int, sot_det_thr: float) -> Tallies:
    """``run_sequence`` over ``seqs`` of ``split_dir``."""
    tallies = Tallies.empty()
    t0 = time.perf_counter()
    for k, seq in enumerate(seqs):
        run_sequence(model, refiner, tracker_cfg, split_dir / seq, k, seed, sot_det_thr, tallies)
        tallies.seconds = time.perf_counter() - t0
        print(f'[tracking] {seq}: {seq_length(split_dir / seq)} frames, '
              f'{tallies.frames / tallies.seconds:.2f} frames/s overall', flush=True)
    return tallies


# ------------------------------------------------------------------------------------ the scores
def mot_table(tallies: Tallies, gts: Dict[str, np.ndarray], lengths: Dict[str, int]) -> List[dict]:
    """Per (source, variant): MOTChallengeMetric's scores and the motmetrics cross-check."""
    table = []
    for (src, name), res in tallies.mot.items():
        r = mot_challenge_metrics(gts, res, lengths)
        mm = motmetrics_summary(gts, res, lengths)
        table.append(dict(source=src, variant=name, HOTA=r['HOTA'], MOTA=r['MOTA'], IDF1=r['IDF1'],
                          IDSW=int(r['IDSW']), FP=int(r['FP']), FN=int(r['FN']), DetA=r['DetA'], AssA=r['AssA'],
                          mm_MOTA=mm['MOTA'], mm_IDF1=mm['IDF1']))
    return table


def detection_table(tallies: Tallies) -> List[dict]:
    sources = sorted({src for src, _ in tallies.det_ious})
    return [dict(source=src, matched=len(tallies.det_ious[(src, False)]),
                 iou_before=float(np.mean(tallies.det_ious[(src, False)] or [0])),
                 iou_after=float(np.mean(tallies.det_ious[(src, True)] or [0]))) for src in sources]


def sot_table(tallies: Tallies) -> List[dict]:
    return [dict(variant=v.name, success_auc=success_auc(tallies.sot_ious[v.name]),
                 mean_iou=float(np.mean(tallies.sot_ious[v.name])), frames=len(tallies.sot_ious[v.name]))
            for v in SOT_VARIANTS]


def refine_settings(cfg, codec, keys: Sequence[str]) -> dict:
    """The ``keys`` of a ``RefineConfig``, its step sizes resolved for the head's box type."""
    values = dict(num_steps=cfg.num_steps, decay=cfg.decay,
                  step_sizes=list(cfg.step_sizes_for(codec.dim, codec.default_step_sizes)))
    return {k: values[k] for k in keys}


# ------------------------------------------------------------------ the mmdet MOT model's paths
def mot_config(model_cfg, tracker_overrides: Optional[dict] = None, refine: Optional[bool] = None) -> Config:
    """``configs/bytetrack_ebm_shapes-video.py`` with the benchmark's detector + EBM config (its
    checkpoint is loaded afterwards), optionally other tracker settings and refinement on/off."""
    mot = Config.fromfile(str(ROOT / MOT_CONFIG))
    mot.model.detector = dict(copy.deepcopy(model_cfg), detector_checkpoint=None)
    mot.model.tracker.update(copy.deepcopy(tracker_overrides or {}))
    if refine is not None:
        mot.model.detector.test_cfg = dict(mot.model.detector.get('test_cfg') or {}, enabled=refine)
        mot.model.tracker.ebm = dict(enabled=refine)
    return mot


def memory_run(model_cfg, ckpt: str, seq_dir: Path, sample_every: int) -> List[tuple]:
    """The mmdet MOT model frame by frame over a long sequence (``inference_mot``); samples of
    (frame, RSS MB, tracks in memory, tracks started so far)."""
    # the lowered thresholds, so that tracks are born, live and die along the sequence
    model = init_track_model(mot_config(model_cfg, LOW_THRESHOLDS), detector=ckpt, device='cpu')
    length = seq_length(seq_dir)
    samples = []
    for t in range(length):
        inference_mot(model, cv2.imread(str(seq_dir / 'img1' / f'{t + 1:06d}.jpg')), frame_id=t, video_len=length)
        if t == 0 or (t + 1) % sample_every == 0 or t == length - 1:
            samples.append((t + 1, round(rss_mb(), 1), len(model.tracker.tracks), int(model.tracker.num_tracks)))
    return samples


RUNNER_KEYS = ('HOTA', 'MOTA', 'IDF1', 'IDSW', 'TP', 'FP', 'FN')


def runner_check(model_cfg, ckpt: str, data_root: Path, work_dir: str) -> dict:
    """The mmdet path: ``configs/bytetrack_ebm_shapes-video.py`` (with the benchmark's detector
    config) through the Runner, MOTChallengeDataset and MOTChallengeMetric, with and without
    refinement; the detector checkpoint is loaded as mmdet's ``test_tracking.py --detector`` does."""
    out = {}
    for name, on in (('ByteTrack', False), ('+ EBM dets + tracks', True)):
        mot = mot_config(model_cfg, refine=on)
        mot.test_dataloader.dataset.data_root = f'{data_root}/'
        mot.work_dir = work_dir
        mot.experiment_name = uuid.uuid4().hex
        mot.log_level = 'WARNING'
        runner = Runner.from_cfg(mot)
        load_checkpoint(runner.model.detector, ckpt, map_location='cpu', strict=True, logger='silent')
        metrics = runner.test()
        out[name] = {k.split('/')[-1]: float(v) for k, v in metrics.items() if k.split('/')[-1] in RUNNER_KEYS}
    return out


# -------------------------------------------------------------------------------------- the CLI
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ebm-work-dir', default='work_dirs/demo/ebm',
                        help="a trained EBM's work dir (last_checkpoint, the dumped config); default: tools/demo.sh's")
    parser.add_argument('--train-dir', default='work_dirs/tracking_bench',
                        help='where small models (det/, ebm/) train when --ebm-work-dir has none; reused if there')
    parser.add_argument('--shapes-data', default='data/shapes',
                        help='still shapes images the small models train on (generated when missing)')
    parser.add_argument('--train-det-iters', type=int, default=400, help="the small detector's training iterations")
    parser.add_argument('--train-ebm-iters', type=int, default=200, help="the small EBM head's training iterations")
    parser.add_argument('--data', default=None, help='default: data/mot_gen/bench_<seqs>x<frames>_s<seed>')
    parser.add_argument('--num-seqs', type=int, default=6, help='generated video sequences scored')
    parser.add_argument('--num-frames', type=int, default=80, help='frames per sequence')
    parser.add_argument('--long-frames', type=int, default=600, help='memory run length (0: skip)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the generated video and the noisy-GT detections')
    parser.add_argument('--sot-det-thr', type=float, default=0.3,
                        help="single object '+ dets' variants: detections scoring at least this may replace the "
                        'prediction')
    parser.add_argument('--track-steps', type=int, default=None, help='refinement steps for tracks (default: as dets)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (torch.set_num_threads)')
    parser.add_argument('--check-runner', action='store_true',
                        help='also run configs/bytetrack_ebm_shapes-video.py through the Runner and MOTChallengeMetric')
    parser.add_argument('--out', default='docs/figures/tracking.md', help='markdown report (its .json beside it)')
    parser.add_argument('--render-only', action='store_true', help='rewrite the .md from the .json next to it')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)
    out = Path(args.out)
    if args.render_only:
        out.write_text(render(json.loads(out.with_suffix('.json').read_text())))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg_path, ckpt, origin = find_or_train(args)
    model = init_detector(cfg_path, ckpt, device='cpu')
    refiner = EBMBoxRefiner.from_detector(model, **({} if args.track_steps is None else
                                                    dict(num_steps=args.track_steps)))
    args.data = args.data or f'data/mot_gen/bench_{args.num_seqs}x{args.num_frames}_s{args.seed}'
    split_dir = generate_video(Path(args.data), SPLIT, args.num_seqs, args.num_frames, args.seed)
    seqs = [f'SHAPES-{k + 1:02d}' for k in range(args.num_seqs)]
    tracker_cfg = Config.fromfile(str(ROOT / MOT_CONFIG)).model.tracker.to_dict()
    tallies = run_sequences(model, refiner, tracker_cfg, split_dir, seqs, args.seed, args.sot_det_thr)

    gts = {s: read_mot_txt(split_dir / s / 'gt' / 'gt.txt') for s in seqs}
    lengths = {s: seq_length(split_dir / s) for s in seqs}
    check = {}
    if args.check_runner:
        t0 = time.perf_counter()
        check = runner_check(model.cfg.model, ckpt, Path(args.data), osp.join(args.train_dir, 'runner_check'))
        print(f'[tracking] runner check: {time.perf_counter() - t0:.0f} s', flush=True)
    memory = []
    if args.long_frames > 0:
        long_dir = generate_video(Path(f'{args.data}_long{args.long_frames}'), LONG_SPLIT, 1, args.long_frames,
                                  args.seed)
        t0 = time.perf_counter()
        memory = memory_run(model.cfg.model, ckpt, long_dir / 'SHAPES-01', max(1, args.long_frames // MEMORY_SAMPLES))
        print(f'[tracking] memory run: {args.long_frames} frames in {time.perf_counter() - t0:.0f} s', flush=True)

    codec = model.ebm_head.codec
    cmd = command_line('tools.benchmarks.tracking')
    result = dict(
        command=cmd.strip(), config=cfg_path, checkpoint=ckpt, origin=origin,
        det_refine=refine_settings(model.refine_cfg, codec, ('num_steps', 'step_sizes', 'decay')),
        track_refine=refine_settings(refiner.cfg, codec, ('num_steps', 'step_sizes')),
        num_seqs=args.num_seqs, num_frames=args.num_frames, seed=args.seed, frames=tallies.frames,
        seconds=tallies.seconds, gt_boxes=int(sum(len(g) for g in gts.values())), threads=args.threads,
        sot_det_thr=args.sot_det_thr, long_frames=args.long_frames, peak_rss_mb=peak_rss_mb(),
        mot=mot_table(tallies, gts, lengths), sot=sot_table(tallies), detections=detection_table(tallies),
        memory=memory, runner=check)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(result, indent=1))
    text = render(result)
    print(text)
    out.write_text(text)


if __name__ == '__main__':
    main()
