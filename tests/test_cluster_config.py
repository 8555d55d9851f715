"""cluster.yaml passes Ray's own cluster-launcher schema and says what docs/cluster.md promises."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(raw)
    validate_config(config)  # raises jsonschema.ValidationError on any schema violation
    return config


def test_schema_rejects_a_broken_copy(raw):
    """The validation really runs: a misspelt top-level key is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = {**raw, "max_worker": 4}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cpu_head_and_autoscaling_multi_gpu_workers(prepared):
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    gpu_pools = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(gpu_pools) == 1
    pool = gpu_pools[0]
    assert pool["resources"]["GPU"] >= 4
    assert pool["min_workers"] == 0 < pool["max_workers"] <= prepared["max_workers"]


def test_every_node_gets_the_repo_a_venv_and_sgstudy(prepared):
    assert "." in prepared["file_mounts"].values()
    setup = "\n".join(prepared["setup_commands"])
    assert "python3 -m venv" in setup
    assert "pip install" in setup and "-e ~/sgstudy" in setup
    assert "sgstudy data synth" in setup


def test_head_runs_mlflow_on_5000_with_s3_artifacts(prepared):
    head = "\n".join(prepared["head_start_ray_commands"])
    assert "mlflow server" in head and "--port 5000" in head
    assert "--backend-store-uri sqlite:///" in head
    assert "--artifacts-destination s3://" in head
    assert "ray start --head" in head


def test_workers_join_with_token_auth(prepared):
    workers = "\n".join(prepared["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in workers
    assert "~/.ray/auth_token" in prepared["file_mounts"].values()


def test_docs_use_the_same_commands():
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needle in ("ray up cluster.yaml", "ray job submit", "--storage-path s3://", "ray down"):
        assert needle in text
