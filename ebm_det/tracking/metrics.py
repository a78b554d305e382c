"""MOT metrics (HOTA, CLEAR/MOTA, Identity/IDF1) through trackeval, a motmetrics cross-check, and
the OPE success curve / AUC of single-object tracking.

MOT tracks are arrays with one row per box: ``frame (1-based), id, x, y, w, h[, score]``;
ground truth rows follow MOT17's ``gt.txt``: ``frame, id, x, y, w, h, conf, class, visibility``.
"""
import configparser
import contextlib
import io
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]
MOT_METRICS = ('HOTA', 'CLEAR', 'Identity')
# MOT17's distractor classes: trackeval drops tracker boxes matched to them (person_on_vehicle,
# static_person, distractor, reflection), and drops every GT row that is not class 1 or conf 0
DISTRACTOR_CLASSES = (2, 7, 8, 12)


def _rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-1] if a.size else 7)


def write_mot_txt(path: PathLike, rows, is_gt: bool = False) -> None:
    """Write tracks (``frame,id,x,y,w,h[,score]``) in MOTChallenge's result format, or GT rows."""
    rows = _rows(rows)
    with open(path, 'w') as f:
        for r in rows:
            if is_gt:
                f.write('%d,%d,%.3f,%.3f,%.3f,%.3f,%d,%d,%.5f\n' % (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]))
            else:
                score = r[6] if len(r) > 6 else 1.0
                f.write('%d,%d,%.3f,%.3f,%.3f,%.3f,%.5f,-1,-1,-1\n' % (r[0], r[1], r[2], r[3], r[4], r[5], score))


def read_mot_txt(path: PathLike) -> np.ndarray:
    """Rows of a MOTChallenge txt file as a float array (empty files give (0, 9))."""
    text = Path(path).read_text().strip()
    if not text:
        return np.zeros((0, 9))
    return np.array([[float(v) for v in line.split(',')] for line in text.splitlines()])


def seq_length(seq_dir: PathLike) -> int:
    parser = configparser.ConfigParser()
    parser.read(Path(seq_dir) / 'seqinfo.ini')
    return int(parser['Sequence']['seqLength'])


def write_gt_folder(root: PathLike, gt: Mapping[str, np.ndarray], num_frames: Mapping[str, int]) -> str:
    """Write GT arrays as MOTChallenge sequence folders (``<root>/<seq>/gt/gt.txt``, seqinfo.ini)."""
    root = Path(root)
    for seq, rows in gt.items():
        (root / seq / 'gt').mkdir(parents=True, exist_ok=True)
        write_mot_txt(root / seq / 'gt' / 'gt.txt', rows, is_gt=True)
        (root / seq / 'seqinfo.ini').write_text(
            f'[Sequence]\nname={seq}\nimDir=img1\nframeRate=30\nseqLength={num_frames[seq]}\n'
            'imWidth=1\nimHeight=1\nimExt=.jpg\n')
    return str(root)


def evaluate_mot(gt_root: PathLike, results: Mapping[str, np.ndarray], seqs: Optional[Sequence[str]] = None,
                 metrics: Sequence[str] = MOT_METRICS, benchmark: str = 'MOT17') -> Dict[str, dict]:
    """HOTA / CLEAR / Identity with trackeval's ``MotChallenge2DBox`` (the official MOTChallenge
    code path, with its preprocessing: conf-0 and non-pedestrian GT are dropped, tracker boxes
    matched to distractor classes too).

    Args:
        gt_root: folder of sequence folders ``<seq>/gt/gt.txt`` + ``<seq>/seqinfo.ini`` (the
            generator's ``<out>/<split>``, or MOT17's ``train``).
        results: seq -> (N, 6 or 7) tracks ``frame, id, x, y, w, h[, score]``; a sequence
            missing here counts as an empty result.
        seqs: sequences to evaluate (default: those of ``results``).
    Returns:
        {seq or 'COMBINED': {HOTA, DetA, AssA, LocA, MOTA, MOTP, IDSW, CLR_TP, CLR_FP, CLR_FN,
        Frag, MT, ML, IDF1, IDP, IDR, IDTP, IDFP, IDFN}} with fractions in [0, 1] (HOTA values are
        averaged over trackeval's 19 localisation thresholds).
    """
    import trackeval
    seqs = list(seqs if seqs is not None else results)
    with tempfile.TemporaryDirectory() as tmp:
        tracker_dir = Path(tmp) / 'trackers' / 'ebm'
        tracker_dir.mkdir(parents=True)
        for seq in seqs:
            write_mot_txt(tracker_dir / f'{seq}.txt', results.get(seq, np.zeros((0, 7))))
        seq_info = {seq: seq_length(Path(gt_root) / seq) for seq in seqs}
        dataset_cfg = dict(GT_FOLDER=str(gt_root), TRACKERS_FOLDER=str(Path(tmp) / 'trackers'),
                           OUTPUT_FOLDER=str(Path(tmp) / 'out'), TRACKERS_TO_EVAL=['ebm'], CLASSES_TO_EVAL=['pedestrian'],
                           BENCHMARK=benchmark, SPLIT_TO_EVAL='train', INPUT_AS_ZIP=False, PRINT_CONFIG=False,
                           DO_PREPROC=True, TRACKER_SUB_FOLDER='', OUTPUT_SUB_FOLDER='', SEQ_INFO=seq_info,
                           SKIP_SPLIT_FOL=True, GT_LOC_FORMAT='{gt_folder}/{seq}/gt/gt.txt')
        eval_cfg = dict(USE_PARALLEL=False, PRINT_RESULTS=False, PRINT_CONFIG=False, TIME_PROGRESS=False,
                        DISPLAY_LESS_PROGRESS=True, OUTPUT_SUMMARY=False, OUTPUT_DETAILED=False, PLOT_CURVES=False,
                        LOG_ON_ERROR=None, BREAK_ON_ERROR=True)
        metric_objs = [getattr(trackeval.metrics, m)(dict(METRICS=[m], THRESHOLD=0.5, PRINT_CONFIG=False))
                       for m in metrics]
        with contextlib.redirect_stdout(io.StringIO()):  # trackeval prints progress unconditionally
            out, _ = trackeval.Evaluator(eval_cfg).evaluate([trackeval.datasets.MotChallenge2DBox(dataset_cfg)],
                                                            metric_objs)
    res = out['MotChallenge2DBox']['ebm']
    summary = {}
    for seq, per_cls in res.items():
        r = per_cls['pedestrian']
        row = {}
        if 'HOTA' in r:
            for k in ('HOTA', 'DetA', 'AssA', 'LocA'):
                row[k] = float(np.mean(r['HOTA'][k]))
        if 'CLEAR' in r:
            for k in ('MOTA', 'MOTP', 'IDSW', 'CLR_TP', 'CLR_FP', 'CLR_FN', 'Frag', 'MT', 'ML'):
                row[k] = float(r['CLEAR'][k])
        if 'Identity' in r:
            for k in ('IDF1', 'IDP', 'IDR', 'IDTP', 'IDFP', 'IDFN'):
                row[k] = float(r['Identity'][k])
        summary['COMBINED' if seq == 'COMBINED_SEQ' else seq] = row
    return summary


def evaluate_mot_arrays(gt: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray],
                        num_frames: Mapping[str, int], **kwargs) -> Dict[str, dict]:
    """``evaluate_mot`` on in-memory GT (seq -> ``frame,id,x,y,w,h,conf,class,vis`` rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_gt_folder(tmp, gt, num_frames)
        return evaluate_mot(tmp, results, seqs=list(gt), **kwargs)


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def motmetrics_summary(gt: Mapping[str, np.ndarray], results: Mapping[str, np.ndarray],
                       num_frames: Optional[Mapping[str, int]] = None) -> Dict[str, float]:
    """MOTA, IDF1, IDSW, FP, FN over all sequences with ``motmetrics`` (a cross-check of
    ``evaluate_mot``), after the same MOT17 preprocessing as trackeval: tracker boxes matched
    (IoU >= 0.5, Hungarian) to distractor-class GT are dropped, then every GT row that is not
    class 1 or has conf 0."""
    import motmetrics as mm
    from scipy.optimize import linear_sum_assignment
    accs, names = [], []
    for seq, g in gt.items():
        g, p = _rows(g), _rows(results.get(seq, np.zeros((0, 7))))
        acc = mm.MOTAccumulator(auto_id=True)
        last = int(max(g[:, 0].max() if len(g) else 0, p[:, 0].max() if len(p) else 0,
                       (num_frames or {}).get(seq, 0)))
        for t in range(1, last + 1):
            gt_t, pr_t = g[g[:, 0] == t], p[p[:, 0] == t]
            if len(gt_t) and len(pr_t):
                sim = _iou_xywh(gt_t[:, 2:6], pr_t[:, 2:6])
                sim[sim < 0.5 - np.finfo(float).eps] = 0
                rows, cols = linear_sum_assignment(-sim)
                ok = sim[rows, cols] > np.finfo(float).eps
                drop = cols[ok][np.isin(gt_t[rows[ok], 7], DISTRACTOR_CLASSES)]
                pr_t = np.delete(pr_t, drop, axis=0)
            gt_t = gt_t[(gt_t[:, 6] != 0) & (gt_t[:, 7] == 1)]
            # motmetrics' iou_matrix (1 - IoU, NaN above max_iou=0.5) without its np.asfarray (gone in numpy 2)
            dist = 1.0 - _iou_xywh(gt_t[:, 2:6], pr_t[:, 2:6])
            dist[dist > 0.5] = np.nan
            acc.update(gt_t[:, 1].astype(int).tolist(), pr_t[:, 1].astype(int).tolist(), dist)
        accs.append(acc)
        names.append(seq)
    mh = mm.metrics.create()
    df = mh.compute_many(accs, names=names, metrics=['mota', 'idf1', 'num_switches', 'num_false_positives',
                                                     'num_misses', 'motp'], generate_overall=True)
    o = df.loc['OVERALL']
    return dict(MOTA=float(o['mota']), IDF1=float(o['idf1']), IDSW=float(o['num_switches']),
                FP=float(o['num_false_positives']), FN=float(o['num_misses']))


# ------------------------------------------------------------------------------- single object
SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # OTB's 21 overlap thresholds


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, 4) x1y1x2y2 boxes."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None) + \
        np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def success_curve(ious: Iterable[float], thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> np.ndarray:
    """Fraction of frames whose IoU exceeds each threshold (OPE success plot)."""
    ious = np.asarray(list(ious), dtype=float)
    if ious.size == 0:
        return np.zeros(len(thresholds))
    return (ious[None, :] > np.asarray(thresholds)[:, None]).mean(1)


def success_auc(ious: Iterable[float], thresholds: np.ndarray = SUCCESS_THRESHOLDS) -> float:
    """Area under the success curve: its mean over the thresholds (OTB's AUC)."""
    return float(success_curve(ious, thresholds).mean())


__all__ = ['evaluate_mot', 'evaluate_mot_arrays', 'motmetrics_summary', 'write_mot_txt', 'read_mot_txt',
           'write_gt_folder', 'success_curve', 'success_auc', 'box_iou_xyxy', 'seq_length']
