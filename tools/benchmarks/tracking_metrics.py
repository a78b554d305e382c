"""MOT scores of the tracking benchmark: mmdet's ``MOTChallengeMetric`` (HOTA, CLEAR, Identity with
PyPI trackeval, MOTChallenge preprocessing) fed with tracks as data samples, and a motmetrics
cross-check; MOTChallenge txt reading.

Rows follow MOT17's files, one box per row: tracks ``frame (1-based), id, x, y, w, h[, score]``,
ground truth ``frame, id, x, y, w, h, conf, class, visibility`` (``gt.txt``).
"""
import configparser
import contextlib
import io
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import motmetrics as mm
import numpy as np
import torch
from mmdet.evaluation import MOTChallengeMetric
from mmdet.structures import DetDataSample, TrackDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmengine.evaluator import Evaluator
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

PathLike = Union[str, Path]
# MOT17's distractor classes (person_on_vehicle, static_person, distractor, reflection): trackeval
# drops tracker boxes matched to them, then every GT row that is not class 1 or has conf 0
DISTRACTOR_CLASSES = (2, 7, 8, 12)
PEDESTRIAN = 1
MATCH_IOU = 0.5  # the MOTChallenge match threshold (CLEAR, Identity and the distractor matching)


def read_mot_txt(path: PathLike) -> np.ndarray:
    """(N, 9) GT or (N, 10) result rows of a MOTChallenge txt file as floats ((0, 9) when empty)."""
    text = Path(path).read_text().strip()
    if not text:
        return np.zeros((0, 9))
    return np.array([[float(v) for v in line.split(',')] for line in text.splitlines()])


def seq_length(seq_dir: PathLike) -> int:
    """Frames of a MOTChallenge sequence folder (``seqLength`` of its ``seqinfo.ini``)."""
    parser = configparser.ConfigParser()
    parser.read(Path(seq_dir) / 'seqinfo.ini')
    return int(parser['Sequence']['seqLength'])


def _rows(a, width: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-1] if a.size else width)


def xywh_to_xyxy(boxes: np.ndarray) -> torch.Tensor:
    """(N, 4) MOT ``x, y, w, h`` -> (N, 4) ``x1, y1, x2, y2`` float64 tensor."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def video_sample(seq: str, gt: np.ndarray, tracks: np.ndarray, num_frames: int) -> TrackDataSample:
    """One sequence as the ``TrackDataSample`` that ``MOTChallengeMetric`` reads from a MOT model
    on ``MOTChallengeDataset``: per frame, the GT rows as the dataset's ``instances`` (``bbox`` in
    x1y1x2y2) and the tracks as ``pred_track_instances``.

    Args:
        seq: sequence name (the metric takes it from ``img_path``: ``<seq>/img1/<frame>.jpg``).
        gt: (N, 9) GT rows; tracks: (M, 6 or 7) track rows (score 1 when absent).
        num_frames: length of the sequence (frames without rows count, as in MOTChallenge).
    """
    gt, tracks = _rows(gt, 9), _rows(tracks, 7)
    frames = []
    for t in range(1, num_frames + 1):
        g, p = gt[gt[:, 0] == t], tracks[tracks[:, 0] == t]
        instances = [dict(instance_id=int(r[1]), bbox=[r[2], r[3], r[2] + r[4], r[3] + r[5]], mot_conf=r[6],
                          category_id=int(r[7]), visibility=r[8]) for r in g]
        sample = DetDataSample(metainfo=dict(img_path=f'{seq}/img1/{t:06d}.jpg', frame_id=t - 1,
                                             ori_video_length=num_frames, instances=instances))
        scores = p[:, 6] if p.shape[1] > 6 else np.ones(len(p))
        sample.pred_track_instances = InstanceData(instances_id=torch.from_numpy(p[:, 1]).long(),
                                                   bboxes=xywh_to_xyxy(p[:, 2:6]).float(),
                                                   scores=torch.from_numpy(scores).float())
        frames.append(sample)
    return TrackDataSample(video_data_samples=frames)


@contextlib.contextmanager
def _quiet():
    """trackeval prints its config and tables, MOTChallengeMetric logs each metric family."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def mot_challenge_metrics(gt: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray],
                          num_frames: Mapping[str, int]) -> Dict[str, float]:
    """HOTA / CLEAR / Identity over all sequences by mmdet's ``MOTChallengeMetric`` (MOT17 rules).

    Args:
        gt: seq -> (N, 9) GT rows; every sequence needs at least one row.
        results: seq -> (M, 6 or 7) track rows; a sequence missing here is an empty result.
        num_frames: seq -> its length.
    Returns:
        the metric's keys without prefix: HOTA, DetA, AssA, MOTA, MOTP, IDSW, TP, FP, FN, Frag, MT,
        ML, IDF1, IDTP, IDFN, IDFP, IDP, IDR; fractions in [0, 1] (HOTA's averaged over trackeval's
        19 localisation thresholds), counts as floats.

    The metric writes GT boxes with ``%d``: fractional GT coordinates are truncated (the generator's
    boxes are whole pixels).
    """
    evaluator = Evaluator(MOTChallengeMetric(metric=['HOTA', 'CLEAR', 'Identity'], track_iou_thr=MATCH_IOU))
    for seq, rows in gt.items():
        evaluator.process([video_sample(seq, rows, results.get(seq, np.zeros((0, 7))), num_frames[seq])])
    with _quiet():
        out = evaluator.evaluate(len(gt))
    return {k.split('/')[-1]: float(v) for k, v in out.items()}


def _iou(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    return bbox_overlaps(xywh_to_xyxy(a_xywh), xywh_to_xyxy(b_xywh)).numpy()


def _drop_matched_to_distractors(gt_t: np.ndarray, pr_t: np.ndarray) -> np.ndarray:
    """trackeval's MOT17 preprocessing of one frame: tracker rows that the Hungarian matching at
    IoU >= 0.5 pairs with a distractor-class GT row are removed."""
    if not (len(gt_t) and len(pr_t)):
        return pr_t
    sim = _iou(gt_t[:, 2:6], pr_t[:, 2:6])
    sim[sim < MATCH_IOU - np.finfo(float).eps] = 0
    rows, cols = linear_sum_assignment(-sim)
    ok = sim[rows, cols] > np.finfo(float).eps
    drop = cols[ok][np.isin(gt_t[rows[ok], 7], DISTRACTOR_CLASSES)]
    return np.delete(pr_t, drop, axis=0)


def motmetrics_summary(gt: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray],
                       num_frames: Optional[Mapping[str, int]] = None) -> Dict[str, float]:
    """MOTA, IDF1, IDSW, FP, FN over all sequences by ``motmetrics``: an independent cross-check of
    ``mot_challenge_metrics``, after the same MOT17 preprocessing as trackeval (tracker boxes
    matched to distractor-class GT dropped, then every GT row that is not class 1 or has conf 0).
    """
    accs, names = [], []
    for seq, g in gt.items():
        g, p = _rows(g, 9), _rows(results.get(seq, np.zeros((0, 7))), 7)
        acc = mm.MOTAccumulator(auto_id=True)
        last = int(max(g[:, 0].max() if len(g) else 0, p[:, 0].max() if len(p) else 0,
                       (num_frames or {}).get(seq, 0)))
        for t in range(1, last + 1):
            gt_t = g[g[:, 0] == t]
            pr_t = _drop_matched_to_distractors(gt_t, p[p[:, 0] == t])
            gt_t = gt_t[(gt_t[:, 6] != 0) & (gt_t[:, 7] == PEDESTRIAN)]
            # motmetrics' iou_matrix (1 - IoU, NaN above max_iou) without its np.asfarray (gone in numpy 2)
            dist = 1.0 - _iou(gt_t[:, 2:6], pr_t[:, 2:6])
            dist[dist > 1 - MATCH_IOU] = np.nan
            acc.update(gt_t[:, 1].astype(int).tolist(), pr_t[:, 1].astype(int).tolist(), dist)
        accs.append(acc)
        names.append(seq)
    mh = mm.metrics.create()
    df = mh.compute_many(accs, names=names, metrics=['mota', 'idf1', 'num_switches', 'num_false_positives',
                                                     'num_misses'], generate_overall=True)
    o = df.loc['OVERALL']
    return dict(MOTA=float(o['mota']), IDF1=float(o['idf1']), IDSW=float(o['num_switches']),
                FP=float(o['num_false_positives']), FN=float(o['num_misses']))
