#!/usr/bin/env python3
"""Track a video file with an mmdet MOT config (e.g. ``configs/bytetrack_ebm_shapes-video.py``) and
write the tracks as a MOTChallenge result file.

    python tools/track_video.py configs/bytetrack_ebm_shapes-video.py VIDEO.mp4 --out tracks.txt \\
        [--detector DET_OR_EBM_CKPT | --checkpoint MOT_CKPT] [--cfg-options KEY=VALUE ...]

Frames are read with mmcv's ``VideoReader`` and go one by one through mmdet's own
``init_track_model`` / ``inference_mot`` (the test pipeline's ``Resize``, then the MOT model:
for the EBM configs, detections refined by the ``EBMRefineDetector`` and Kalman-predicted track
boxes refined by ``EBMByteTracker`` before association). Boxes come back in the video's pixels.

Each line of the output is ``frame,id,x,y,w,h,score,-1,-1,-1`` with 1-based frames, the line
mmdet's ``MOTChallengeMetric`` writes (``%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,-1,-1,-1``); a video
without tracks gives an empty file.
"""
import argparse
from pathlib import Path
from typing import Optional, Union

import mmcv
import numpy as np

MOT_LINE = '%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,-1,-1,-1\n'  # mmdet's MOTChallengeMetric


def load_model(config, checkpoint: Optional[str] = None, detector: Optional[str] = None, device: str = 'cpu',
               cfg_options: Optional[dict] = None):
    """mmdet's ``init_track_model`` (``checkpoint``: the whole MOT model's; ``detector``: the
    detector's or refine detector's own checkpoint; neither: the config's initial weights)."""
    import ebm_det  # noqa: F401  (the configs import it too; registers the EBM models)
    from mmdet.apis import init_track_model
    from mmdet.utils import register_all_modules
    register_all_modules()
    return init_track_model(str(config), checkpoint, detector=detector, device=device, cfg_options=cfg_options)


def track_video(model, video: Union[str, Path], out: Union[str, Path]) -> np.ndarray:
    """Run ``model`` (from ``load_model``) over every frame of ``video`` and write ``out``.

    Returns the (N, 7) rows written (frame, id, x, y, w, h, score), frames 1-based.
    """
    from mmdet.apis import inference_mot
    reader = mmcv.VideoReader(str(video))
    num_frames = len(reader)
    rows = []
    for frame_id in range(num_frames):
        img = reader.get_frame(frame_id)
        if img is None:
            raise RuntimeError(f'{video}: frame {frame_id} of {num_frames} could not be decoded')
        result = inference_mot(model, img, frame_id=frame_id, video_len=num_frames)
        tracks = result[0].pred_track_instances
        boxes = tracks.bboxes.detach().cpu().double().numpy().reshape(-1, 4)
        ids = tracks.instances_id.detach().cpu().numpy().reshape(-1)
        scores = tracks.scores.detach().cpu().double().numpy().reshape(-1)
        for (x1, y1, x2, y2), tid, score in zip(boxes, ids, scores):
            rows.append((frame_id + 1, int(tid), x1, y1, x2 - x1, y2 - y1, score))
    rows = np.array(rows, dtype=np.float64).reshape(-1, 7)
    write_mot_txt(out, rows)
    return rows


def write_mot_txt(path: Union[str, Path], rows: np.ndarray) -> None:
    """(N, 7) rows (frame, id, x, y, w, h, score) -> a MOTChallenge result file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        for row in rows:
            f.write(MOT_LINE % tuple(row))


def parse_args() -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmdet MOT config, e.g. configs/bytetrack_ebm_shapes-video.py')
    parser.add_argument('video', help='a video file mmcv.VideoReader (OpenCV) can read')
    parser.add_argument('--out', required=True, help='the MOTChallenge result file to write')
    parser.add_argument('--checkpoint', help="the whole MOT model's checkpoint")
    parser.add_argument('--detector', help="the detector's (or EBM refine detector's) checkpoint")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = load_model(args.config, args.checkpoint, args.detector, args.device, args.cfg_options)
    rows = track_video(model, args.video, args.out)
    print(f'{args.out}: {len(rows)} boxes, {len(np.unique(rows[:, 1])) if len(rows) else 0} tracks')


if __name__ == '__main__':
    main()
