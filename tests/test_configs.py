"""Every shipped config parses, inherits the stock base it names, and builds its model."""
from pathlib import Path

import pytest

pytest.importorskip('mmdet')
import ebm_det  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

CONFIGS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds(name):
    from mmengine.registry import DefaultScope, init_default_scope
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / 'configs' / name))
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    if cfg.model.type.startswith('EBMRefine'):
        assert model.freeze_detector == cfg.model.get('freeze_detector', True)
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
        assert 'InitialPredictionMetric' in [e['type'] for e in evaluators]
        if cfg.model.type == 'EBMRefineDetector':  # mmdet's --tta must keep the before/after pairs
            # merged with the NMS IoU of the detector's own test (mmdet's: 0.5 for R-CNNs, 0.65 for YOLOX)
            det_test = cfg.model.detector.get('test_cfg') or {}
            nms = (det_test.get('rcnn') or det_test).get('nms') or dict(iou_threshold=0.5)
            assert cfg.tta_model.type == 'EBMDetTTAModel'
            assert cfg.tta_model.tta_cfg.nms.iou_threshold == nms['iou_threshold']
    assert DefaultScope.get_current_instance().scope_name == scope
