"""mmengine checkpoints load under torch's weights_only=True; nothing else gets through."""
import os
import pickle

import pytest
import torch

pytest.importorskip('mmengine')
import ebm_det  # noqa: E402,F401
from mmengine.logging import HistoryBuffer, MessageHub  # noqa: E402


def test_mmengine_message_hub_round_trips_weights_only(tmp_path):
    hub = MessageHub.get_instance('ckpt_test')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('np', __import__('numpy').arange(3.0))
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(state_dict={'w': torch.ones(2)}, message_hub=hub.state_dict()), path)
    ck = torch.load(path, map_location='cpu', weights_only=True)
    buf = ck['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == 1.0 and buf.statistics('min') == 0.5


class _Evil:

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return (getattr, (self.target, self.name))


@pytest.mark.parametrize('target,name', [(HistoryBuffer, '__init__'), (HistoryBuffer, '__class__'), (MessageHub, 'get_instance')])
def test_other_getattr_is_refused(tmp_path, target, name):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Evil(target, name)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_arbitrary_callables_are_refused(tmp_path):
    class Run:
        def __reduce__(self):
            return (os.system, ('true', ))

    path = tmp_path / 'evil2.pth'
    torch.save({'x': Run()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
