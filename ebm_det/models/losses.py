"""The core's EBM losses (``ebm_det.core.losses``) in mmdet's MODELS registry, so a head config reads
``loss=dict(type='NCEPlusLoss', num_samples=64)`` and a user can register a loss of their own (a
subclass of ``ebm_det.core.EBMLoss``)."""
from typing import Mapping, Union

from mmdet.registry import MODELS

from ebm_det.core import LOSSES, EBMLoss, build_loss

for _cls in LOSSES.values():
    MODELS.register_module(module=_cls)


def registered_losses(registry=MODELS) -> list:
    """The names of every ``EBMLoss`` a head config can pick: the core's and those registered in
    ``registry``, sorted."""
    own = [name for name, cls in registry.module_dict.items() if isinstance(cls, type) and issubclass(cls, EBMLoss)]
    return sorted(set(LOSSES) | set(own))


def build_ebm_loss(cfg: Union[dict, EBMLoss], registry=MODELS) -> EBMLoss:
    """Build an ``EBMLoss``: the core's types through ``ebm_det.core.build_loss``, any other type
    (a user's ``EBMLoss`` subclass) from ``registry`` (mmdet's or mmdet3d's MODELS).

    Raises:
        ValueError: no ``type`` (the message names the registered losses), an unknown type or
            argument, a bad value, or the old ``dict(method=...)`` form.
        TypeError: ``cfg`` is not a mapping (e.g. a string from ``--cfg-options loss=dict(...)``).
    """
    if isinstance(cfg, EBMLoss):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f'EBM loss config must be a dict, got {type(cfg).__name__} {cfg!r}; on the command line '
                        'set its keys one by one, e.g. --cfg-options model.ebm_head.loss.type=NCEPlusLoss '
                        'model.ebm_head.loss.num_samples=64')
    # a base config's head has no loss to delete: _delete_ is mmengine's merge instruction, not an argument
    cfg = {k: v for k, v in cfg.items() if k != '_delete_'}
    if 'type' not in cfg and 'method' not in cfg:
        raise ValueError(f"EBM loss config {dict(cfg)!r} has no 'type': name the loss, e.g. "
                         f"dict(type='NCEPlusLoss', num_samples=64); registered: {registered_losses(registry)}")
    name = dict(cfg).get('type')
    if 'method' in cfg or not isinstance(name, str) or name in LOSSES or registry.get(name) is None:
        return build_loss(cfg)
    loss = registry.build(cfg)
    if not isinstance(loss, EBMLoss):
        raise TypeError(f'loss type {name!r} built a {type(loss).__name__}, not an ebm_det.core.EBMLoss')
    return loss
