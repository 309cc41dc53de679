"""Reading Keras model files without TensorFlow: a model config and named weight arrays, nothing else.

Three containers exist in the wild, all read with h5py / zipfile:

- legacy HDF5 (`model.save("m.h5")`, Keras 2 and 3): root attribute `model_config` (JSON) and the weights under
  `model_weights/<layer>/`, each layer listing its arrays in the `weight_names` attribute;
- legacy HDF5 weights only (`model.save_weights("w.h5")`, Keras 2): the same layer groups at the root;
- Keras 3 (`model.save("m.keras")`: a zip with `config.json` and `model.weights.h5`; `save_weights("w.weights.h5")`
  writes that h5 alone): arrays are positional, `layers/<path>/vars/0, 1, …`, where `<path>` is the snake-cased
  class name made unique in layer order (`conv2d`, `conv2d_1`, …); recent versions also record the layer's name.

Nothing here knows what a layer computes: `KerasFile.weights[layer]` is the list of arrays in the order Keras
created them, with their names where the file has them.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.errors import GraftError, first_line

WeightList = list[tuple[str | None, np.ndarray]]


@dataclass
class KerasFile:
    """What a Keras file holds: its kind, the model config (if any) and each layer's weight arrays."""

    path: Path
    kind: str  # "h5-model", "h5-weights", "keras-archive", "keras3-weights"
    config: dict | None  # {"class_name": "Functional" | "Sequential", "config": {...}}
    weights: dict[str, WeightList] = field(default_factory=dict)
    keras_version: str | None = None
    positional: list[tuple[str, WeightList]] = field(default_factory=list)  # Keras 3 paths not yet named

    @property
    def keras_major(self) -> int:
        try:
            return int(str(self.keras_version).split(".")[0])
        except ValueError:
            return 3 if self.kind in ("keras-archive", "keras3-weights") else 2


def read_keras_file(path: str | Path, architecture: str | Path | None = None) -> KerasFile:
    """Read a .h5 / .keras file; `architecture` (a model JSON, or a full model file) supplies a missing config."""
    path = Path(path)
    if path.is_dir():
        raise GraftError(_directory_message(path))
    if not path.is_file():
        raise GraftError(f"Keras file not found: {path}")
    try:
        result = _read_archive(path) if zipfile.is_zipfile(path) else _read_h5(path)
    except GraftError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise GraftError(f"{path} is damaged or not a Keras model file ({first_line(error, 120)})") from None
    if architecture is not None:
        result.config = read_architecture(architecture)
    if result.config is None:
        raise GraftError(
            f"{path} holds weights only; give the architecture too (--architecture: the model's JSON from "
            "model.to_json(), or a full .keras/.h5 model file)"
        )
    _name_positional(result)
    _split_nested(result)
    return result


def _directory_message(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
        return (
            f"{path} is a TensorFlow SavedModel directory, which holds a traced graph, not a Keras model graft can "
            'read; load it in Keras and save it as a Keras file: model.save("model.keras")'
        )
    if (path / "config.json").is_file() and (path / "model.weights.h5").is_file():
        return f"{path} is an unzipped .keras archive; zip it back (or pass the original .keras file)"
    return f"{path} is a directory, not a Keras model file (.keras, .h5 or .weights.h5)"


def read_architecture(path: str | Path) -> dict:
    """A model config from a JSON file (`model.to_json()`, a .keras archive's config.json) or a full model file."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"architecture file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GraftError(f"{path} is not a Keras model JSON ({first_line(error, 120)})") from None
        return _check_config(config, path)
    config = read_keras_file(path).config
    assert config is not None
    return config


def _check_config(config: object, origin: Path) -> dict:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "class_name" not in config:
        raise GraftError(f"{origin} does not hold a Keras model config (class_name + config)")
    if "layers" not in config["config"]:
        raise GraftError(
            f"{origin}: a {config.get('class_name')} model without a layer list (subclassed models cannot be "
            "imported; rebuild it as a Sequential or functional model)"
        )
    return config


def _read_archive(path: Path) -> KerasFile:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise GraftError(f"{path} is a zip file but not a Keras archive (no config.json)")
        config = _check_config(json.loads(archive.read("config.json")), path)
        meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        if "model.weights.h5" not in names:
            raise GraftError(f"{path}: the archive has no model.weights.h5 (sharded or npz weights are not supported)")
        blob = archive.read("model.weights.h5")
    import h5py

    with h5py.File(io.BytesIO(blob), "r") as handle:
        positional = _positional_layers(handle)
    return KerasFile(path, "keras-archive", config, {}, meta.get("keras_version"), positional)


def _read_h5(path: Path) -> KerasFile:
    import h5py

    if not h5py.is_hdf5(path):
        raise GraftError(f"{path} is not a Keras file (neither HDF5 nor a .keras zip archive)")
    with h5py.File(path, "r") as handle:
        attrs = handle.attrs
        version = _text(attrs.get("keras_version")) if "keras_version" in attrs else None
        if "model_config" in attrs:
            config = _check_config(json.loads(_text(attrs["model_config"])), path)
            group = handle.get("model_weights", handle)
            version = version or _text(group.attrs.get("keras_version", "")) or None
            return KerasFile(path, "h5-model", config, _legacy_weights(group), version)
        if "layer_names" in attrs:
            return KerasFile(path, "h5-weights", None, _legacy_weights(handle), version)
        if "layers" in handle or "vars" in handle:
            return KerasFile(path, "keras3-weights", None, {}, "3", _positional_layers(handle))
    raise GraftError(f"{path} is an HDF5 file but not a Keras model or weights file")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _legacy_weights(group) -> dict[str, WeightList]:
    """Legacy layout: `layer_names` at the top, each layer group lists `weight_names` (paths inside the group)."""
    weights: dict[str, WeightList] = {}
    for layer in (_text(n) for n in group.attrs["layer_names"]):
        layer_group = group[layer]
        names = [_text(n) for n in layer_group.attrs.get("weight_names", [])]
        weights[layer] = [(name, np.asarray(layer_group[name][()])) for name in names]
    return weights


def short_name(name: str) -> str:
    """'conv1/kernel:0' → 'kernel'; 'base/c1/bias' → 'bias'."""
    return name.rsplit("/", 1)[-1].split(":")[0]


def _split_nested(result: KerasFile) -> None:
    """Legacy files keep a nested model's weights in one group ('base' → 'base/c1/kernel' or 'c1/kernel:0'):
    regroup them per inner layer as 'base/c1', the names graph.parse_nodes gives the inlined layers."""
    assert result.config is not None
    for layer in result.config["config"]["layers"]:
        name = layer.get("name") or layer["config"].get("name")
        if not isinstance(layer["config"].get("layers"), list) or not result.weights.get(name):
            continue
        inner_layers = [path.split("/") for path in _inner_paths(layer["config"]["layers"], name)]
        for weight_name, array in result.weights.pop(name):
            owner = _owner(weight_name.split(":")[0].split("/")[:-1], inner_layers, name)
            result.weights.setdefault(owner, []).append((weight_name, array))


# Top-level groups of a Keras weights file that hold training state, not the model's weights: the optimizer's
# slots (Keras 3 and 2.15 `.keras`) and compiled metrics' counters (Keras 2.15 `.keras` after `fit`).
TRAINING_STATE = ("optimizer", "metrics", "compile_metrics")
# A Keras 3 random layer's (RandomFlip, Dropout, GaussianNoise…) generator seed: RNG state, not a weight.
SEED_STATE = "seed_generator"


def _inner_paths(layers: list[dict], prefix: str) -> list[str]:
    """The inlined names ('base/inner/c1') of every layer inside a nested model, however deep."""
    out: list[str] = []
    for layer in layers:
        full = f"{prefix}/{layer.get('name') or layer['config'].get('name')}"
        out.append(full)
        if isinstance(layer["config"].get("layers"), list):
            out += _inner_paths(layer["config"]["layers"], full)
    return out


def _owner(tokens: list[str], inner_layers: list[list[str]], model: str) -> str:
    """The inner layer a legacy weight name ('inner/c1/kernel': owning model, layer; Keras 2: 'c1/kernel:0') belongs
    to: the one layer whose inlined path ends with the name's layer tokens."""
    for start in range(len(tokens)):
        suffix = tokens[start:]
        matches = [path for path in inner_layers if path[-len(suffix) :] == suffix]
        if len(matches) == 1:
            return "/".join(matches[0])
    raise GraftError(f"the weight {'/'.join(tokens)!r} of nested model {model!r} belongs to no layer inside it")


def _positional_layers(handle) -> list[tuple[str, WeightList]]:
    """Keras 3 layout: (path, arrays) for every `…/vars` group with arrays; the path is tagged with the recorded
    layer name when there is one (`path@name`). Training state (TRAINING_STATE) and seed state are skipped."""
    found: list[tuple[str, WeightList]] = []

    def visit(name: str, obj) -> None:
        if not name.endswith("/vars") or not hasattr(obj, "keys") or not len(obj):
            return
        parts = name.split("/")
        if parts[0] in TRAINING_STATE or any(p == SEED_STATE or p.startswith(f"{SEED_STATE}_") for p in parts):
            return
        arrays = [(None, np.asarray(obj[key][()])) for key in sorted(obj.keys(), key=int)]
        recorded = _text(obj.attrs["name"]) if "name" in obj.attrs else ""
        found.append((name.removesuffix("/vars") + (f"@{recorded}" if recorded else ""), arrays))

    handle.visititems(visit)
    return found


def _snake(name: str) -> str:
    """keras.src.utils.naming.to_snake_case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _path_names(layers: list[dict], path: str = "layers", prefix: str = "") -> dict[str, str]:
    """Keras 3 weight paths → layer names ('base/c1' inside a nested model), by Keras's own path rule."""
    used: dict[str, int] = {}
    out: dict[str, str] = {}
    for layer in layers:
        base = _snake(layer["class_name"])
        unique = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        full = prefix + (layer.get("name") or layer["config"].get("name"))
        out[f"{path}/{unique}"] = full
        if isinstance(layer["config"].get("layers"), list):
            out.update(_path_names(layer["config"]["layers"], f"{path}/{unique}/layers", f"{full}/"))
    return out


def _name_positional(result: KerasFile) -> None:
    """Give Keras 3 positional weights their layer names, from the recorded name or by Keras's own path rule."""
    if not result.positional:
        return
    assert result.config is not None
    by_path = _path_names(result.config["config"]["layers"])
    for path, arrays in result.positional:
        path, _, recorded = path.partition("@")
        parent = path.rpartition("/layers/")[0] if path.count("/layers/") else ""
        if recorded and (not parent or parent in by_path):
            name = (by_path[parent] + "/" if parent else "") + recorded
        else:
            name = by_path.get(path)
        if name is None:
            raise GraftError(f"{result.path}: weights at {path} belong to no layer of the architecture")
        result.weights[name] = arrays
    result.positional = []
