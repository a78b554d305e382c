"""The markdown report of the tracking benchmark (``tracking.py``) from its result dict (the .json)."""
from typing import List


def render(r: dict) -> str:
    """The markdown report of a result (the .json next to it)."""
    md = render_header(r) + render_mot(r) + render_sot(r)
    if r['runner']:
        md += render_runner(r)
    if r['memory']:
        md += render_memory(r)
    return '\n'.join(md)


def render_header(r: dict) -> List[str]:
    return [
        '# Tracking with EBM box refinement (generated shapes video)', '',
        f"Command: `{r['command']}`", '',
        f"Detector + EBM: `{r['config']}` with `{r['checkpoint']}` ({r['origin']}); refinement of detections: "
        f"{r['det_refine']}; of tracks: {r['track_refine']}.",
        f"Data: `python -m ebm_det.synthetic.mot_video`, {r['num_seqs']} sequences x {r['num_frames']} frames, 256 px, "
        f"seed {r['seed']} ({r['frames']} frames, {r['gt_boxes']} GT boxes); one detector pass per frame feeds every "
        f"variant ({r['frames'] / r['seconds']:.2f} frames/s for all variants together, {r['threads']} thread(s)). "
        'One seeded run on few frames, without confidence intervals: differences of about a point (0.01) are '
        'not resolved by it.', '']


def render_mot(r: dict) -> List[str]:
    return [
        '## MOT: mmdet ByteTracker, trackeval (MOTChallenge preprocessing), motmetrics cross-check', '',
        '| detections | variant | HOTA | MOTA | IDF1 | IDSW | FP | FN | DetA | AssA | motmetrics MOTA | motmetrics IDF1 |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
        *[f"| {m['source']} | {m['variant']} | {m['HOTA']:.4f} | {m['MOTA']:.4f} | {m['IDF1']:.4f} | {m['IDSW']} | "
          f"{m['FP']} | {m['FN']} | {m['DetA']:.4f} | {m['AssA']:.4f} | {m['mm_MOTA']:.4f} | {m['mm_IDF1']:.4f} |"
          for m in r['mot']], '',
        '`+ EBM dets`: detections refined by the EBM head (`refine_instances`, as `EBMRefineDetector`); `+ EBM '
        'tracks`: each track\'s Kalman-predicted box refined on the frame before association (`EBMByteTracker`). '
        'Within a detection source every row gets the same raw detections. `detector`: the Faster R-CNN\'s own '
        'detections with ByteTrack\'s stock thresholds (high 0.6, low 0.1, new track 0.7); `detector, low thr`: '
        'the same detections, thresholds 0.3 / 0.1 / 0.4; `noisy GT`: simulated detections (GT boxes jittered, '
        'missed by visibility, low scores for occluded objects, random false positives; `NoisyGTDetector`), '
        'which isolate the trackers and the EBM from the detector\'s quality. Refinement always runs on the '
        'detector\'s neck features.', '',
        'Refinement of the detections alone (each GT object\'s best detection, IoU >= 0.3 to it):', '',
        '| detections | matched | mean IoU to GT, raw | after EBM refinement |', '|---|---|---|---|',
        *[f"| {d['source']} | {d['matched']} | {d['iou_before']:.4f} | {d['iou_after']:.4f} |"
          for d in r['detections']], '']


def render_sot(r: dict) -> List[str]:
    return [
        '## Single object (OPE): constant-velocity tracker, success AUC (21 IoU thresholds)', '',
        '| variant | success AUC | mean IoU | scored frames |', '|---|---|---|---|',
        *[f"| {o['variant']} | {o['success_auc']:.4f} | {o['mean_iou']:.4f} | {o['frames']} |" for o in r['sot']], '',
        'Each GT track starts from its first GT box and is tracked alone: `constant velocity` (no measurement: '
        'the box stays), `+ EBM` (the prediction refined by `EBMBoxRefiner` each frame), `+ dets` (the '
        f"best-overlapping detector detection with score >= {r['sot_det_thr']} replaces the prediction at IoU >= "
        '0.3), `+ dets + EBM` (refined prediction, refined detections).', '']


def render_runner(r: dict) -> List[str]:
    return [
        '## Cross-check: the same model through mmdet\'s Runner (`configs/bytetrack_ebm_shapes-video.py`, '
        '`MOTChallengeDataset`, `MOTChallengeMetric` with PyPI trackeval)', '',
        'Detections: `detector`, stock thresholds; compare with the first block of the MOT table.', '',
        '| variant | HOTA | MOTA | IDF1 | IDSW | TP | FP | FN |', '|---|---|---|---|---|---|---|---|',
        *[f"| {k} | {v['HOTA']:.4f} | {v['MOTA']:.4f} | {v['IDF1']:.4f} | {int(v['IDSW'])} | {int(v['TP'])} | "
          f"{int(v['FP'])} | {int(v['FN'])} |" for k, v in r['runner'].items()], '']


def render_memory(r: dict) -> List[str]:
    rss = [m for _, m, _, _ in r['memory']]
    return [
        '## Memory over a long sequence: `EBMByteTrack` (both refinements), frame by frame', '',
        f"One generated sequence of {r['long_frames']} frames through the mmdet MOT model (`model.predict` "
        'per frame, thresholds 0.3 / 0.1 / 0.4 so that tracks start and end throughout). Resident set size of '
        f'the process after the sampled frames: {min(rss):.0f}-{max(rss):.0f} MB, last minus first sample '
        f"{rss[-1] - rss[0]:+.1f} MB; process peak {r['peak_rss_mb']:.0f} MB (including the evaluation above).", '',
        '| frame | RSS (MB) | tracks held by the tracker | tracks started so far |', '|---|---|---|---|',
        *[f'| {f} | {m} | {n} | {c} |' for f, m, n, c in r['memory']], '']
