"""How users drive ebm_det: scripts run by path (tools/train.py, tools/test.py, ...) and benchmark modules."""
