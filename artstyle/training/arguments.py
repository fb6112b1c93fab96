"""Command-line plumbing shared by ``run_pretrain.py`` and ``run_finetune.py``.

- `ScriptArgumentParser`: ``HfArgumentParser`` whose usage errors are one line on stderr (exit code 2);
  old flag names are renamed to the current ones with a ``FutureWarning`` (`rename_deprecated_flags`).
- `run_cli`: runs a script's ``main`` and turns a bad-input error into one line and exit code 2.
- `parse_json_option`, `parse_overrides`, `build_config`: the one way to choose the model config on the
  command line, the same in both scripts: ``--config_preset`` (or ``--config_name`` / a model folder)
  plus ``--config_overrides`` (JSON object or ``k=v,k=v``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser

from ..configuration_artstyle import ArtStyleConfig

__all__ = [
    "DEPRECATED_FLAGS",
    "ScriptArgumentParser",
    "build_config",
    "check_config_fields",
    "check_data_source",
    "parse_json_option",
    "parse_overrides",
    "queue_size_warning",
    "rename_deprecated_flags",
    "run_cli",
]


# former flag -> current flag, in both scripts (the old names still work, with a FutureWarning)
DEPRECATED_FLAGS = {"--dataset": "--dataset_name", "--num_workers": "--dataloader_num_workers",
                    "--hub_private": "--hub_private_repo"}


def rename_deprecated_flags(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """Replace old flag names (``--dataset`` -> ``--dataset_name`` ...) in ``argv``, warning once per flag."""
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in renames:
            new = renames[name]
            warnings.warn(f"{name} is deprecated, use {new}", FutureWarning, stacklevel=3)
            arg = f"{new}{sep}{value}"
        out.append(arg)
    return out


class ScriptArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with one-line usage errors and deprecated flag names.

    ``renames`` maps old flag names to current ones; ``parse(argv)`` returns the dataclasses (or reads
    them from a single ``.json`` file argument, as the Hugging Face examples do).
    """

    def __init__(self, dataclass_types, renames: Mapping[str, str] | None = None,
                 config_flags: Sequence[str] = (), **kwargs):
        super().__init__(dataclass_types, **kwargs)
        self.renames = dict(renames or {})
        self.config_flags = tuple(config_flags)  # former ``--<field> VALUE`` flags, now --config_overrides fields

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse(self, argv: Sequence[str] | None = None) -> tuple:
        argv = list(sys.argv[1:] if argv is None else argv)
        if len(argv) == 1 and argv[0].endswith(".json"):
            return self.parse_json_file(json_file=os.path.abspath(argv[0]))
        argv, overrides = self._pop_config_flags(rename_deprecated_flags(argv, self.renames))
        *outputs, remaining = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        if overrides:
            holder = next(o for o in outputs if hasattr(o, "config_overrides"))
            holder.config_overrides = json.dumps({**parse_overrides(holder.config_overrides), **overrides})
        return outputs

    def _pop_config_flags(self, argv: list[str]) -> tuple[list[str], dict]:
        """Take ``--<field> VALUE`` of the former config flags out of ``argv`` as overrides (with a warning)."""
        rest, overrides, i = [], {}, 0
        while i < len(argv):
            name, sep, value = argv[i].partition("=")
            field = name[2:] if name.startswith("--") else None
            if field in self.config_flags:
                if not sep:
                    if i + 1 >= len(argv):
                        self.error(f"argument {name}: expected one argument")
                    value, i = argv[i + 1], i + 1
                try:
                    overrides[field] = json.loads(value)
                except json.JSONDecodeError:
                    self.error(f"argument {name}: invalid value {value!r}")
                warnings.warn(f"{name} is deprecated, use --config_overrides {field}={value}", FutureWarning,
                              stacklevel=3)
            else:
                rest.append(argv[i])
            i += 1
        return rest, overrides


def run_cli(main: Callable[[list[str] | None], Any], prog: str, argv: list[str] | None = None) -> Any:
    """Run ``main(argv)``; a ``ValueError`` or ``OSError`` (bad input: missing files, a model neither local nor
    on the Hub) becomes one line on stderr (``<prog>: error: ...``) and exit code 2, without a traceback."""
    try:
        return main(argv)
    except (ValueError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_json_option(value: str | None, name: str) -> dict:
    """A JSON-object option (``--dataset_options`` ...) as a dict; ``None`` -> ``{}``."""
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{name} must be a JSON object, got {value!r}: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"--{name} must be a JSON object, got {value!r}")
    return parsed


def parse_overrides(value: str | None) -> dict:
    """``--config_overrides``: a JSON object or ``k=v,k=v`` (each value parsed as JSON if possible)."""
    if not value:
        return {}
    if value.lstrip().startswith("{"):
        return parse_json_option(value, "config_overrides")
    overrides = {}
    for item in value.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: expected key=value, got {item!r} in {value!r}")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


LOCAL_DATASETS = ("imagefolder", "pandora18k", "ava", "flickr")  # read from --data_dir


def check_data_source(dataset_name: str, data_dir: str | None) -> None:
    """``--data_dir`` must exist when given, and is required by the local datasets."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(f"--data_dir {data_dir!r}: no such folder")
    if data_dir is None and dataset_name in LOCAL_DATASETS:
        raise ValueError(f"--dataset_name {dataset_name} needs --data_dir (the folder of the dataset)")


def check_config_fields(overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every override that is not an `ArtStyleConfig` field."""
    known = {*ArtStyleConfig().to_dict(), "num_labels"}
    unknown = sorted(key for key in overrides if key not in known)
    if unknown:
        raise ValueError(f"--config_overrides: unknown config field(s) {unknown}")


def build_config(
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    source: str | None = None,
    moco_v3_baseline: bool = False,
) -> ArtStyleConfig:
    """The model config: ``source`` (a ``config.json`` or a folder holding one) or ``preset``, then
    ``overrides``, then, with ``moco_v3_baseline``, `ArtStyleConfig.moco_v3_baseline`. Bad input raises
    ``ValueError`` / ``FileNotFoundError`` naming the option."""
    overrides = dict(overrides or {})
    check_config_fields(overrides)
    try:
        if source:
            path = Path(source).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"--config_name / --model_name_or_path: {source!r} does not exist")
            if path.is_dir() and not (path / "config.json").is_file():
                raise FileNotFoundError(f"--config_name / --model_name_or_path: no config.json in {source!r}")
            config = ArtStyleConfig.from_pretrained(str(path)) if path.is_dir() else ArtStyleConfig.from_json_file(path)
            for key, value in overrides.items():
                setattr(config, key, value)
            config.validate_artstyle()
        else:
            config = ArtStyleConfig.from_preset(preset, **overrides)
    except TypeError as err:  # e.g. a string where the config needs a number
        raise ValueError(f"--config_overrides: {err}") from err
    return config.moco_v3_baseline() if moco_v3_baseline else config


def queue_size_warning(queue_size: int, num_images: int) -> str | None:
    """A warning when the negative queue holds at least as many keys as there are training images, else ``None``.

    Such a queue necessarily holds an older key of the very image being contrasted, as a negative. The README
    suggests ``queue_size`` <= a quarter of the training images; the message says so and names the field.
    """
    if queue_size <= 0 or queue_size < num_images:
        return None
    suggestion = num_images // 4
    return (f"queue_size {queue_size} >= the {num_images} training images: the queue holds older keys of the "
            f"images it contrasts, as negatives. Pass --config_overrides '{{\"queue_size\": {suggestion}}}' "
            "(a quarter of the training images) or 0 (in-batch negatives).")
