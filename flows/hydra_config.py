"""Hydra wiring: the model registry as configs, ``model=[A,B]`` ensembles, and compose().

Every registered model name is a config of the ``model`` group, served from
the registry through Hydra's ConfigStore (one source of truth); named ensembles
are YAML files in ``conf/model/``. Hydra's own multi-select would merge
``model=[A,B]`` (and lists merge by replacement), so such a selection is
rewritten into one stored ensemble config whose members are concatenated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from clipvec_tasks.registry import get_spec, list_models

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
SAMPLES_DIR = ROOT / "examples" / "images"
_MODEL_ARG = re.compile(r"^(model)=(.*)$")


def _member(name: str) -> dict[str, Any]:
    return {"name": name, "pretrained": "default", "normalize": True, "seed": 0}


def register() -> None:
    """Register resolvers and one ``model/NAME`` config per registered name."""
    OmegaConf.register_new_resolver("clipvec_samples", lambda: str(SAMPLES_DIR), replace=True)
    cs = ConfigStore.instance()
    for spec in list_models():
        cs.store(group="model", name=spec.name, node={"members": [_member(spec.name)]})


def _members_of(name: str) -> list[dict[str, Any]]:
    """Members of a named ensemble file, or the one member of a model name."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if path.is_file():
        return list(OmegaConf.to_container(OmegaConf.load(path))["members"])  # type: ignore[index]
    get_spec(name)  # raises a ClipvecError that suggests close names
    return [_member(name)]


def expand_overrides(overrides: list[str]) -> list[str]:
    """Rewrite ``model=...`` so that lists concatenate and any known name resolves.

    ``model=NAME`` for an unlisted torchvision architecture and ``model=[A,B]``
    become a stored config; unknown names raise ClipvecError with suggestions.
    """
    out = []
    cs = ConfigStore.instance()
    for arg in overrides:
        m = _MODEL_ARG.match(arg)
        if not m:
            out.append(arg)
            continue
        value = m.group(2).strip()
        names = [n.strip().strip("'\"") for n in value.strip("[]").split(",") if n.strip()]
        members = [mem for n in names for mem in _members_of(n)]
        if len(names) == 1 and (CONF_DIR / "model" / f"{names[0]}.yaml").is_file():
            out.append(f"model={names[0]}")
            continue
        key = "__".join(names)
        cs.store(group="model", name=key, node={"members": members})
        out.append(f"model={key}")
    return out


def compose(overrides: list[str]) -> dict[str, Any]:
    """The resolved job config for ``overrides`` (the same as the CLI would build)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="vectorize"):
        cfg = hydra_compose("config", overrides=expand_overrides(list(overrides)))
    return to_job_dict(cfg)


def to_job_dict(cfg: Any) -> dict[str, Any]:
    """A plain, resolved dict of the job's groups (Hydra's own node dropped)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data
