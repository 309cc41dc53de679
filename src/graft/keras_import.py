"""`import_keras`: a Keras .h5 / .keras file → a graft bundle with the same logits, without TensorFlow.

1. read the file (files.py): model config + weight arrays;
2. describe it as a layer graph (graph.py) and build that module (graph_module.py): the exact reference;
3. if the layers spell a Keras Application timm also has, map the weights onto the timm model
   (applications.py) and keep it only if its logits match the layer graph's on a random input;
   otherwise (or with `generic=True`) the bundle stores the layer graph itself;
4. the Keras preprocessing mode (the application's, whichever way it is imported) becomes the bundle's input spec
   (mean/std over pixels in [0, 1]).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import torch

from graft._version import __version__
from graft.bundle import Bundle
from graft.errors import GraftError, first_line
from graft.models.factory import GraftModel, build_model
from graft.models.keras.applications import PREPROCESS, application_preprocessing, detect, map_application
from graft.models.keras.files import read_keras_file
from graft.models.keras.graph import describe, parse_nodes
from graft.models.keras.graph_module import KerasGraphModule
from graft.models.keras.timm_models import CAFFE_MEAN, CAFFE_STD, TF_MEAN, TF_STD
from graft.record import Architecture, KerasRecord, Provenance
from graft.spec import InputSpec

GRAPH_MODEL_NAME = "keras-graph"
PARITY_TOLERANCE = 1e-4  # max |Δ logit| between the timm mapping and the layer graph, relative to the logit scale

# Keras preprocessing modes as mean/std over pixels in [0, 1] (RGB order; caffe's BGR is handled in the weights).
PREPROCESSING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "tf": (TF_MEAN, TF_STD),  # x / 127.5 − 1
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet mean/std on x / 255
    "caffe": (CAFFE_MEAN, CAFFE_STD),  # BGR, x − mean (0–255)
    "raw": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),  # pixels 0–255 as they are
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels / 255
}


def import_keras(
    path: str | Path,
    output: str | Path | None = None,
    *,
    architecture: str | Path | None = None,
    classes: list[str] | str | Path | None = None,
    preprocess: str | None = None,
    size: int | tuple[int, int] | None = None,
    generic: bool = False,
    overwrite: bool = False,
) -> Bundle:
    """Import a Keras model; with `output`, the bundle is also written there (atomically).

    `architecture`: model JSON or full model file, for weights-only files. `classes`: names, a comma-separated
    string or a file with one name per line (default: ImageNet names for ImageNet applications, else class_0…).
    `preprocess`: tf, torch, caffe, raw (0–255) or unit (0–1); default: the application's, else raw when the model
    starts with a Rescaling layer, else unit. `size`: input size for models with a free input size (default 224).
    `generic=True` keeps the layer graph even for a recognised application.
    """
    source = read_keras_file(path, architecture)
    nodes, _, shape, _ = parse_nodes(source.config)
    detected = detect(nodes)  # decides the preprocessing whichever way the model is imported
    family = None if generic else detected
    mode = _preprocess_mode(preprocess, detected, nodes, shape)
    graph, graph_state, notes = describe(source, input_order="bgr" if mode == "caffe" else "rgb")
    spec = _input_spec(shape, size, mode)
    reference = _graph_model(graph, graph_state, spec)
    num_classes = _num_classes(reference, spec)

    model, arch, mapped_name, parity = reference, None, None, None
    if family is not None:
        try:
            mapped = map_application(source, family, bgr=mode == "caffe")
            candidate_arch = Architecture(mapped.timm_name, mapped.num_classes, "pool", mapped.timm_kwargs)
            candidate = build_model(candidate_arch, spec)
            candidate.backbone.load_state_dict(mapped.state, strict=True)
            parity, sensitivity = _max_difference(candidate, reference, spec)
            if sensitivity <= 100 * PARITY_TOLERANCE:  # the check could not fail: keep what is exact
                notes.append(
                    f"{mapped.name}: the layer graph's logits barely depend on the check's random inputs "
                    f"(Δ {sensitivity:.1e}), so the timm mapping could not be verified; kept the layer graph"
                )
            elif parity <= PARITY_TOLERANCE:
                model, arch, mapped_name = candidate, candidate_arch, mapped.name
            else:
                notes.append(
                    f"{mapped.name} mapped onto {mapped.timm_name} differs by {parity:.2e}; kept the layer graph"
                )
        except (GraftError, RuntimeError) as error:
            notes.append(
                f"looks like a Keras {family} but does not map onto timm ({first_line(error, 160)}); "
                "kept the layer graph"
            )
    if arch is None:
        arch = Architecture(GRAPH_MODEL_NAME, num_classes, "pool", {}, graph=graph)
    names = _class_names(classes, num_classes, imagenet=mapped_name is not None and num_classes == 1000)
    provenance = Provenance(
        graft_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        keras=KerasRecord(
            source=str(Path(path)),
            architecture_file=str(architecture) if architecture else None,
            file_kind=source.kind,
            keras_version=source.keras_version,
            model_name=source.config["config"].get("name"),
            application=mapped_name,
            imported_as=arch.timm_name,
            preprocess=mode,
            parity_max_abs_diff_vs_graph=parity,
            notes=notes,
        ),
    )
    bundle = Bundle(model.eval(), arch, spec, names, {}, provenance)
    if output is not None:
        bundle.save(output, overwrite=overwrite)
    return bundle


def _preprocess_mode(preprocess: str | None, family: str | None, nodes: list, shape: tuple) -> str:
    if preprocess is not None:
        if preprocess not in PREPROCESSING:
            raise GraftError(f"unknown preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESSING)}")
        if preprocess in ("caffe", "torch") and shape[-1] != 3:
            raise GraftError(f"{preprocess} preprocessing needs a 3-channel model; this one takes {shape[-1]}")
        return preprocess
    if family is not None:
        return PREPROCESS[family]
    known = application_preprocessing(nodes)
    if known is not None:
        return known[1]
    return "raw" if nodes and _takes_pixels(nodes[0]) else "unit"


def _takes_pixels(first) -> bool:
    """A model that prepares its own input from 0–255 pixels: it starts with Rescaling (EfficientNet, MobileNetV3,
    the Keras tutorials), or with a Normalization whose mean is on the pixel scale (ConvNeXt)."""
    if first.kind == "Rescaling":
        return True
    mean = first.config.get("mean") if first.kind == "Normalization" else None
    return isinstance(mean, list) and bool(mean) and max(abs(float(m)) for m in mean) > 2.0


def _input_spec(shape: tuple, size: int | tuple[int, int] | None, mode: str) -> InputSpec:
    height, width, channels = shape
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    elif height is None or width is None:
        height, width = 224, 224
    if channels not in (1, 3):  # the channel rule (docs/input-modes.md) feeds images as 1 or 3 channels only
        raise GraftError(
            f"graft imports 1- or 3-channel image models; this one takes {channels} channels (images decode to "
            "gray or RGB, and no rule turns them into another count)"
        )
    mean, std = PREPROCESSING[mode]
    mean, std = tuple(mean[:channels]), tuple(std[:channels])
    return InputSpec(
        size=(int(height), int(width)),
        channels=int(channels),
        mode="replicate",
        mean=mean,
        std=std,
        backbone_mean=mean,
        backbone_std=std,
    )


def _graph_model(graph: dict, state: dict[str, torch.Tensor], spec: InputSpec) -> GraftModel:
    module = KerasGraphModule(graph)
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise GraftError(f"weights do not fit the layers: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return GraftModel(module).eval()


def _num_classes(model: GraftModel, spec: InputSpec) -> int:
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, spec.channels, *spec.size))
    except (RuntimeError, ValueError) as error:
        raise GraftError(f"the model does not run at {spec.size[0]}×{spec.size[1]}: {first_line(error, 160)}") from None
    if out.ndim != 2:
        raise GraftError(f"the model's output has shape {tuple(out.shape[1:])}: graft imports classifiers (N, classes)")
    return int(out.shape[1])


def _max_difference(a: GraftModel, b: GraftModel, spec: InputSpec) -> tuple[float, float]:
    """(max |Δ logit| between a and b on two random images as the spec prepares them, how much b's logits differ
    between the two), both relative to max(1, the logits' magnitude): a check is only worth its name when the
    second is far above the tolerance."""
    pixels = torch.rand(2, spec.channels, *spec.size, generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (spec.mean, spec.std))
    x = (pixels - mean) / std
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    scale = max(1.0, float(yb.abs().max()))
    return float((ya - yb).abs().max()) / scale, float((yb[0] - yb[1]).abs().max()) / scale


def _class_names(classes: list[str] | str | Path | None, count: int, *, imagenet: bool) -> list[str]:
    if classes is None:
        return imagenet_names() if imagenet else [f"class_{i}" for i in range(count)]
    if isinstance(classes, Path) or (isinstance(classes, str) and Path(classes).is_file()):
        names = [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()]
    elif isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c) for c in classes]
    if len(names) != count:
        raise GraftError(f"{len(names)} class names for a model with {count} outputs")
    return names


def imagenet_names() -> list[str]:
    """ImageNet-1k class names from timm's offline copy: the first synonym ('tench'), made unique by WordNet id."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    short = [d.split(",")[0].strip() for d in info.label_descriptions()]
    wnids = info.label_names()
    return [f"{s} ({w})" if short.count(s) > 1 else s for s, w in zip(short, wnids, strict=True)]
