"""The scheduled deployment builds offline; its overrides flow runs the job."""

from __future__ import annotations

import lance
import pytest

from deployments.vectorize_deployment import build, vectorize_overrides

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_deployment_builds_offline_with_cron_and_overrides():
    d = build(["source.uri=s3://b/p", "sink.uri=s3://b/p.lance"], cron="15 3 * * *")
    assert d.name == "clipvec-nightly" and d.parameters["overrides"][0] == "source.uri=s3://b/p"
    (schedule,) = d.schedules
    assert schedule.schedule.cron == "15 3 * * *"
    assert d.entrypoint.endswith("vectorize_deployment.py:vectorize_overrides")


def test_overrides_flow_composes_and_runs(image_dir, tmp_path):
    sink = tmp_path / "d.lance"
    summary = vectorize_overrides([
        f"source.uri={image_dir}", f"sink.uri={sink}", "model=[tiny_clip,resnet18]",
        "model.members.0.pretrained=random", "model.members.1.pretrained=random",
        "runtime.device=cpu", f"weights.cache_dir={tmp_path / 'c'}",
    ])
    assert summary["ok"] == 7 and summary["dim"] == 32 + 512
    assert lance.dataset(str(sink)).count_rows() == 7


def test_compose_matches_the_command_line():
    from flows.hydra_config import compose

    cfg = compose(["model=clip_l14_resnet152", "model.members.1.pretrained=random"])
    assert [m["name"] for m in cfg["model"]["members"]] == ["openai_clip_vit_l14", "resnet152"]
    assert cfg["model"]["members"][1]["pretrained"] == "random"
    assert cfg["source"]["uri"].endswith("examples/images")
    assert "hydra" not in cfg


@pytest.mark.parametrize(("overrides", "names"), [
    (["model=resnet50"], ["resnet50"]),
    (["model=[open_clip_vit_b32,resnet18]"], ["open_clip_vit_b32", "resnet18"]),
    (["model=[clip_l14_resnet152,vit_b_16]"], ["openai_clip_vit_l14", "resnet152", "vit_b_16"]),
    (["model=open_clip_vit_h14", "model.members.0.normalize=false"], ["open_clip_vit_h14"]),
])
def test_model_selections_compose(overrides, names):
    from flows.hydra_config import compose

    cfg = compose(overrides)
    assert [m["name"] for m in cfg["model"]["members"]] == names
    if "normalize=false" in overrides[-1]:
        assert cfg["model"]["members"][0]["normalize"] is False
