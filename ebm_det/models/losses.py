"""The core's EBM losses (``ebm_det.core.losses``) in mmdet's MODELS registry, so a head config reads
``loss=dict(type='NCEPlusLoss', num_samples=128, beta=0.1)`` and a user can register a loss of their
own (a subclass of ``ebm_det.core.EBMLoss``)."""
from typing import Union

from mmdet.registry import MODELS

from ebm_det.core import LOSSES, EBMLoss, build_loss

for _cls in LOSSES.values():
    MODELS.register_module(module=_cls)


def build_ebm_loss(cfg: Union[dict, EBMLoss], registry=MODELS) -> EBMLoss:
    """Build an ``EBMLoss``: the core's types through ``ebm_det.core.build_loss``, any other type
    (a user's ``EBMLoss`` subclass) from ``registry`` (mmdet's or mmdet3d's MODELS).

    Raises:
        ValueError: an unknown type or argument, a bad value, or the old ``dict(method=...)`` form.
    """
    if isinstance(cfg, EBMLoss):
        return cfg
    name = dict(cfg).get('type')
    if 'method' in cfg or not isinstance(name, str) or name in LOSSES or registry.get(name) is None:
        return build_loss(cfg)
    loss = registry.build(cfg)
    if not isinstance(loss, EBMLoss):
        raise TypeError(f'loss type {name!r} built a {type(loss).__name__}, not an ebm_det.core.EBMLoss')
    return loss
