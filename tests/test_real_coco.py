"""Real COCO images and a real COCO detector (``../shared/data/real_coco``, see its README.md):
the YOLOX-Nano EBM configs through the project's tools and mmdet's own APIs. Skipped, saying why,
where the shared data folder is absent (a user's clone)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

DATA = ROOT.parent / 'shared' / 'data' / 'real_coco'
CFG = ROOT / 'configs' / 'yolox-nano_ebm-nceplus_real-coco-small.py'
pytestmark = pytest.mark.skipif(not DATA.is_dir(),
                                reason=f'{DATA} not found: the real-data checks need the shared data folder '
                                '(../shared/data beside the repository)')


def tool(*args, timeout=600):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope='module')
def head_checkpoint(tmp_path_factory):
    """An EBM checkpoint of the real-data config after 2 training iterations on the real images
    (tools/train.py): the head is barely trained; the frozen detector is the real one."""
    work = tmp_path_factory.mktemp('real_coco_train')
    tool('tools/train.py', CFG, '--work-dir', work, '--cfg-options', 'train_cfg.max_iters=2',
         'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=2', 'param_scheduler.0.end=2',
         'param_scheduler.0.milestones=[1,2]')
    return (work / 'last_checkpoint').read_text().strip()


def test_detector_only_scores_the_real_detector_through_the_ebm_config(tmp_path):
    """``tools/test.py CONFIG --detector-only``: the detector's own AP on the 153 real val images
    (the data README's figure with mmdet's own config: AP 28.7, AP50 45.0), before any head is
    trained; with refinement off the refined metrics equal the detector's exactly."""
    out = tmp_path / 'metrics.json'
    tool('tools/test.py', CFG, '--detector-only', '--work-dir', tmp_path, '--out-json', out)
    m = json.loads(out.read_text())
    assert m['coco_init/bbox_mAP'] == pytest.approx(0.287, abs=0.0015)
    assert m['coco_init/bbox_mAP_50'] == pytest.approx(0.450, abs=0.0015)
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l'):
        assert m[f'coco/{key}'] == m[f'coco_init/{key}'], key
    assert m['refine/worse'] == 0 and m['refine/iou'] == m['refine/iou_init']


def test_detector_only_needs_no_checkpoint_and_refuses_one(tmp_path):
    proc = subprocess.run([sys.executable, 'tools/test.py', str(CFG)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and '--detector-only' in proc.stderr


def test_mmdet_apis_refine_real_images_and_zero_steps_change_nothing(head_checkpoint):
    """mmdet's ``init_detector`` + ``inference_detector`` and ``DetInferencer`` on a real val image:
    both box sets come back; with T = 0 every box is exactly the detector's, although YOLOX does
    not clip its boxes (refinement's clipping never pulls a box in by itself)."""
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    image = str(sorted((DATA / 'val2017').glob('*.jpg'))[0])
    model = init_detector(str(CFG), head_checkpoint, device='cpu')
    assert type(model).__name__ == 'EBMRefineDetector' and len(model.dataset_meta['classes']) == 80
    pred = inference_detector(model, image).pred_instances
    assert {'bboxes', 'bboxes_init', 'scores_init', 'ebm_scores'} <= set(pred.keys()) and len(pred) > 0
    assert torch.isfinite(pred.bboxes).all()
    model.refine_cfg = model.refine_cfg.replace(num_steps=0)
    pred0 = inference_detector(model, image).pred_instances
    assert torch.equal(pred0.bboxes, pred0.bboxes_init) and torch.equal(pred0.scores, pred0.scores_init)
    assert torch.isinf(pred0.ebm_scores).all()
    inferencer = DetInferencer(model=str(CFG), weights=head_checkpoint, device='cpu', show_progress=False)
    out = inferencer(image, return_datasamples=True)['predictions'][0].pred_instances
    torch.testing.assert_close(out.bboxes, pred.bboxes, rtol=1e-5, atol=1e-3)


def test_runner_test_reports_before_after_on_real_images(head_checkpoint, tmp_path):
    """tools/test.py with the trained checkpoint on the first 8 real val images: COCO metrics of
    both box sets, their difference and the localisation metric, from one pass."""
    out = tmp_path / 'metrics.json'
    tool('tools/test.py', CFG, head_checkpoint, '--work-dir', tmp_path, '--out-json', out, '--cfg-options',
         'test_dataloader.dataset.indices=8')
    m = json.loads(out.read_text())
    assert {'coco/bbox_mAP', 'coco_init/bbox_mAP', 'coco_gain/bbox_mAP', 'refine/iou', 'refine/iou_init'} <= set(m)
    assert m['coco_gain/bbox_mAP'] == pytest.approx(m['coco/bbox_mAP'] - m['coco_init/bbox_mAP'], abs=1e-9)
    assert m['refine/matched'] > 0
