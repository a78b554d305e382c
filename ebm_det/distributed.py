"""Distributed runs on CPU machines, for ``tools/train.py`` and ``tools/test.py``."""
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """torchrun without CUDA (``--launcher pytorch`` on a CPU machine, e.g. CI): mmengine's launcher
    calls ``torch.cuda.set_device`` and wraps the model with ``device_ids=[LOCAL_RANK]``, both of
    which fail for CPU modules. Start the gloo process group here (mmengine then skips its own)
    and let DDP wrap the CPU model (``device_ids=None``)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = {**wrapper, **(cfg.get('model_wrapper_cfg') or {}), 'device_ids': None}
