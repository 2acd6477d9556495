"""One experiment's set-up from its config: data splits, model, masks and weights, loaders.

:func:`~orthosparse.lab.train.train` and :func:`~orthosparse.lab.inspection.inspect` both build
their network with :func:`build_experiment`, so ``inspect`` measures exactly the network that
``train`` trains: same data, same model, same :func:`~orthosparse.sparsify.sparsify` call (see
docs/design.md "§3 the sparsify pipeline"), same random streams.

Random streams of a run with seed ``s`` (:func:`~orthosparse.lab.runtime.seed_for`):

- the global torch RNG, seeded by ``run_scope(s, ...)``: the model's default initialization
  (which saliency masks score before the chosen init overwrites the weights);
- ``seed_for(s, "mask-data")``: the batches saliency masks (snip, grasp) read;
- ``seed_for(s, "sparsify")``: the masks and the initial weights;
- ``seed_for(s, "batches")``: the training batches (their order and augmentation draws);
- ``s`` itself: the validation hold-out of the data.

Loading data and making loaders never draws from the global RNG, so the model is the same
whether or not the loaders are made.

Example:
    >>> from orthosparse.lab.config import resolve_config
    >>> from orthosparse.lab.runtime import run_scope
    >>> cfg = resolve_config("digits")
    >>> with run_scope(cfg.seed, cfg.deterministic, cfg.threads):
    ...     exp = build_experiment(cfg, torch.device("cpu"))
    >>> sorted(exp.masks)[:1]
    ['hidden.0.weight']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, options_dict, sparsify_options_for
from .runtime import seed_for

__all__ = ["Experiment", "build_experiment", "load_splits", "build_model", "first_examples"]


@dataclass
class Experiment:
    """What :func:`build_experiment` makes.

    Attributes:
        config: the config it was built from.
        splits: the data (:class:`~orthosparse.data.DataSplits`).
        model: the sparsified, initialized model, on the device.
        masks: ``{parameter name: bool mask}`` as :func:`~orthosparse.sparsify.sparsify`
            returns it (empty for a dense model).
        train_loader: shuffled training batches drawn from ``loader_generator`` (``None``
            unless ``loaders=True``).
        loader_generator: the ``"batches"`` stream; its state is what a checkpoint keeps.
        eval_loaders: ``{"val"|"test": loader}`` for the non-empty evaluation splits.
    """

    config: TrainConfig
    splits: Any
    model: nn.Module
    masks: dict[str, torch.Tensor]
    train_loader: Any = None
    loader_generator: torch.Generator | None = None
    eval_loaders: dict[str, Any] = field(default_factory=dict)


def load_splits(config: TrainConfig) -> Any:
    """Load ``config.dataset`` with its root, validation hold-out (seeded by ``config.seed``)
    and ``data_options``."""
    from ..data import load_dataset

    return load_dataset(config.dataset, root=config.data_root, val_fraction=config.val_fraction,
                        seed=config.seed, **options_dict(config.data_options, "data_options"))


def build_model(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Create ``config.model`` for the data; ``depth``/``width``/``activation`` when set.

    ``width`` is the model's ``width`` or ``channels`` argument.

    Raises:
        ValueError: a set field the model does not take (naming the ones it takes).
    """
    from ..models import create_model, model_arguments

    accepted = model_arguments(config.model)
    kwargs: dict[str, Any] = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    for key, targets in (("depth", ("depth",)), ("width", ("width", "channels")),
                         ("activation", ("activation",))):
        value = getattr(config, key)
        if value is None:
            continue
        target = next((t for t in targets if t in accepted), None)
        if target is None:
            raise ValueError(f"{key}={value!r} does not apply to model {config.model!r} (it "
                             f"takes: {', '.join(accepted)}); leave {key} unset (none)")
        kwargs[target] = value
    for key, value in options_dict(config.model_options, "model_options").items():
        if key in kwargs:
            raise ValueError(f"model_options sets {key!r}, which is already set (by depth/width/"
                             f"activation or the data); set it in one place")
        kwargs[key] = value
    return create_model(config.model, **kwargs)


def build_experiment(config: TrainConfig, device: torch.device, *, splits: Any = None,
                     loaders: bool = False) -> Experiment:
    """Load the data, build ``config.model`` and sparsify it as ``config`` says.

    Call it inside ``run_scope(config.seed, config.deterministic, config.threads)`` (as
    ``train`` and ``inspect`` do): the model's default initialization draws from the global
    torch RNG, and the masks and weights from their own streams (see the module docstring).

    Args:
        config: the resolved configuration (names already checked with ``check_names``).
        device: where the model (and the loaders' batches) go.
        splits: data already loaded with :func:`load_splits` for this config, to reuse it.
        loaders: also make the training loader (shuffled, augmented as ``config.augment`` says)
            and the evaluation loaders.

    Raises:
        ValueError: a setting the model does not take, no training examples (with
            ``loaders``), or what :func:`~orthosparse.sparsify.sparsify` rejects.
    """
    from ..data import make_loader
    from ..sparsify import sparsify

    if splits is None:
        splits = load_splits(config)
    train_loader, loader_generator, eval_loaders = None, None, {}
    if loaders:
        augment = splits.augment if config.augment == "auto" else config.augment
        # Every rank of a distributed run draws the same global batches and trains on its slice.
        loader_generator = torch.Generator().manual_seed(seed_for(config.seed, "batches"))
        train_loader = make_loader(splits.train, config.batch_size, shuffle=True,
                                   generator=loader_generator, augment=augment, device=device)
        eval_loaders = {
            split: make_loader(getattr(splits, split), config.eval_batch_size, shuffle=False,
                               device=device)
            for split in ("val", "test") if len(getattr(splits, split)) > 0
        }
        if len(train_loader) == 0:
            raise ValueError(f"dataset {config.dataset!r} has no training examples")
    model = build_model(config, splits.input_shape, splits.num_classes).to(device)
    # Saliency masks (snip, grasp) read batches from their own stream, not the training one.
    mask_loader = make_loader(splits.train, config.batch_size, shuffle=True, device=device,
                              generator=torch.Generator().manual_seed(
                                  seed_for(config.seed, "mask-data")))
    masks = sparsify(
        model, config.density, mask=config.mask, init=config.init, data=mask_loader,
        gain=config.gain, bias_std=config.bias_std, exclude=tuple(config.exclude),
        generator=torch.Generator().manual_seed(seed_for(config.seed, "sparsify")),
        **sparsify_options_for(config),
    )
    return Experiment(config, splits, model, masks, train_loader, loader_generator,
                      eval_loaders)


def first_examples(splits: Any, n: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples (train examples when there is no test split), fewer when
    the split is shorter: the batch the Jacobian is measured on, in training and ``inspect``.

    Returns:
        ``(inputs (m, *input_shape), targets (m,) int64)`` on ``device``, ``m = min(n, len)``.
    """
    data = splits.test if len(splits.test) else splits.train
    m = min(n, len(data))
    inputs = torch.stack([data[i][0] for i in range(m)]).to(device)  # (m, *input_shape)
    targets = torch.as_tensor([int(data[i][1]) for i in range(m)],
                              dtype=torch.int64).to(device)  # (m,)
    return inputs, targets
