"""Feature cache for `transfer` without augmentation: the frozen backbone runs once, the head trains on its output.

With the backbone frozen (and its BatchNorm in inference mode) and no augmentation, every epoch would feed the
same images through the same function; computing the pre-logit features once turns each later epoch into a
pass over a small linear layer. The result equals head training through the full model, up to float rounding.
"""

from __future__ import annotations

import torch
from rich.console import Console
from torch import nn

from graft.data.base import ImageSet
from graft.data.loader import count_batches, iter_batches
from graft.data.preprocess import to_model_input
from graft.models.factory import GraftModel
from graft.progress import batch_progress
from graft.spec import InputSpec
from graft.training.config import TrainConfig
from graft.training.distributed import World
from graft.training.runtime import Runtime


def can_cache(config: TrainConfig, model: GraftModel, world: World) -> bool:
    """Only when nothing before the classifier learns: no augmentation, no learned stem, one process."""
    return (
        config.feature_cache
        and config.strategy == "transfer"
        and config.augment == "none"
        and model.stem is None
        and not world.distributed
    )


@torch.no_grad()
def cache_features(
    model: GraftModel, spec: InputSpec, images: ImageSet, runtime: Runtime, config: TrainConfig, out: Console
) -> torch.Tensor:
    """float32 pre-logit features (N, D) of every image, in the set's order."""
    model.eval()
    chunks = []
    total = count_batches(len(images), config.batch_size)
    with batch_progress(out) as progress:
        task = progress.add_task(f"caching features of {images.name}", total=total, stats="")
        for batch, _ in iter_batches(images, spec, config.batch_size, workers=config.workers):
            # float32, like every evaluation: the head then trains on the features the bundle will compute
            chunks.append(model.pre_logits(runtime.to_input(to_model_input(batch, spec))).float().cpu())
            progress.update(task, advance=1)
    return torch.cat(chunks)


def head_on_features(model: GraftModel) -> nn.Module:
    """The layers between pre-logit features and logits: the flatten head's dropout and Dense, or the classifier."""
    if model.head is not None:
        return nn.Sequential(model.head.drop, model.head.fc)
    return model.classifier()
