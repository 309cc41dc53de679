"""What each surgery operation reports about itself, as TypedDicts.

They stay plain dicts at run time because they are stored as they are in a certificate's `details` and in the
bundle's provenance (graft.json); the types only document and check their keys. The functional syntax is needed
because several keys are `from`, a Python keyword.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

ChannelsDetails = TypedDict(
    "ChannelsDetails",
    {
        "from": int,
        "to": int,
        "rule": str,  # the kernel rule used, e.g. "luminance (W_c = L_c·W)"
        "claim": str,  # "exact" or "approximate": what the rule promises before measuring
        "input_mode": NotRequired[str],  # e.g. "replicate → fold", when the input mode had to change
    },
)

ResizeDetails = TypedDict(
    "ResizeDetails",
    {
        "from": list[int],  # [height, width]
        "to": list[int],
        "resampled": list[str],  # state-dict keys resampled to the new size (flatten heads, position embeddings)
        "claim": str,
        "mode": NotRequired[str],  # "resample" or "stem" (records before issue 18: resample)
        "rule": NotRequired[str],  # stem: the resize it reproduces, e.g. "bilinear, antialiased, stretch"
        "network_size": NotRequired[list[int]],  # stem: what the network behind it takes
        "composed": NotRequired[bool],  # stem: composed with the size stem the model already had
        # stem: max |uint8 preprocessing − the stem's float resize| over the probe, in pixel levels (0–255)
        "preprocessing_delta_levels": NotRequired[float],
    },
)


class RecalibrationDetails(TypedDict):
    images: int  # how many images the BatchNorm statistics were averaged over
    source: str  # the image set's name
    batchnorm_layers: int


class DeepenDetails(TypedDict):
    after: str  # the stage the block follows
    block: str  # relu | residual | transformer
    channels: int
    module: str  # the inserted block's name in the backbone
    stage_output_min: float  # a relu block is exact only when this is ≥ 0
    claim: str


WidenDetails = TypedDict(
    "WidenDetails",
    {
        "layer": str,
        "from": int,
        "to": int,
        "per_channel_layers": list[str],  # BatchNorms, activations, depthwise convs copied along
        "consumers": list[str],  # convs whose input weights were divided among the copies
        "gates": list[str],  # squeeze-excitation convs copied along
        "residual_stream": NotRequired[list[str]],  # other layers writing the residual stream, co-widened
        "residual_sums": NotRequired[int],  # residual sums the channels cross (0: a private branch)
        "claim": str,
    },
)


class ReclassDetails(TypedDict):
    kept: list[str]
    removed: list[str]
    added: list[str]
    imprinted: list[str]  # added classes whose rows come from example images
    zero_initialised: list[str]  # added classes with no examples: logit 0 until fine-tuning
    claim: str


TransplantDetails = TypedDict(
    "TransplantDetails",
    {
        "from": str,  # timm names
        "to": str,
        "transfer": dict,  # graft.models.weights.TransferReport.to_dict(): loaded, adapted, skipped tensors
        "summary": str,
    },
)


class HealDetails(TypedDict):
    source: str  # the image set distilled on (labels never read)
    images: int
    steps: int
    temperature: float
    lr: float
    batch_size: int
    seed: int
    distilled_classes: int  # classes both models have: only their logits are matched
    not_distilled: list[str]  # the new model's classes the old one lacks: left as surgery made them
    loss_first: float  # mean distillation loss over the first and last steps
    loss_last: float
    claim: str


Details = (
    ChannelsDetails
    | ResizeDetails
    | RecalibrationDetails
    | DeepenDetails
    | WidenDetails
    | ReclassDetails
    | TransplantDetails
    | HealDetails
)
