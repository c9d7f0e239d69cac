"""Profiles, config files and `--set` overrides resolve to one validated config."""

from __future__ import annotations

import pytest

from machinery.config import (
    ConfigError,
    HubSource,
    ProceduralSource,
    load_config,
    profile_names,
)


def test_every_shipped_profile_validates():
    assert {"cpu-smoke", "kaggle-tpu", "tpu-pod"} <= set(profile_names())
    for name in profile_names():
        assert load_config(name).profile == name


def test_cpu_smoke_is_offline_and_procedural():
    config = load_config("cpu-smoke")
    assert all(isinstance(s, ProceduralSource) for s in config.sources)
    assert config.teacher.backend == "tunix" and config.student.model == "gemma3-270m"


def test_tpu_profiles_train_hub_students_in_bfloat16():
    from models import hf

    for name, expected in (("kaggle-tpu", "google/gemma-3-1b-it"), ("tpu-pod", "google/gemma-3-4b-it")):
        config = load_config(name)
        assert config.student.model == expected and hf.is_hub_id(config.student.model)
        assert config.student.dtype == "bfloat16"
    assert load_config("tpu-pod").mesh.multihost


def test_set_overrides_dotted_keys_with_yaml_values():
    config = load_config("cpu-smoke", sets=["teacher.n=2", "teacher.temperature=0.5", "seed=9",
                                            "sources=[{kind: hub, id: openai/gsm8k, data_files: x.jsonl}]"])
    assert (config.teacher.n, config.teacher.temperature, config.seed) == (2, 0.5, 9)
    assert config.sources == [HubSource(id="openai/gsm8k", data_files="x.jsonl")]


def test_config_file_overrides_the_profile(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dedup:\n  threshold: 0.7\nteacher:\n  model: qwen\n")
    config = load_config("cpu-smoke", path)
    assert (config.dedup.threshold, config.teacher.model, config.teacher.backend) == (0.7, "qwen", "tunix")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["teacher.n=0"], "teacher.n: .*greater than or equal to 1 .*got 0"),
        (["teacher.backend=grpc"], "teacher.backend: .*'openai' or 'tunix'.*got 'grpc'"),
        (["teacher.nn=3"], "teacher.nn: Extra inputs"),
        (["no_equals_sign"], "expected key=value"),
        (["sources=[{kind: ftp}]"], "sources.0"),
        (["teacher.base_url=[]"], "teacher.base_url: .*empty list"),
        (["teacher.base_url=[http://a:1/v1, ftp://b/v1]"], "teacher.base_url must be an http.*got 'ftp://b/v1'"),
        (["teacher.base_url=[http://a:1/v1, http://a:1/v1]"], "lists 'http://a:1/v1' more than once"),
        (["execution.engine=dask"], "execution.engine: .*'local' or 'ray'.*got 'dask'"),
        (["execution.address=headnode"], "execution.address must be .*got 'headnode'"),
        (["execution.shard_rows=0"], "execution.shard_rows: .*greater than or equal to 1 .*got 0"),
        (["student.dtype=float16"], "student.dtype: .*'float32' or 'bfloat16'.*got 'float16'"),
        (["mesh.multihost=maybe"], "mesh.multihost: .*got 'maybe'"),
    ],
)
def test_bad_values_are_named(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu-smoke", sets=sets)


def test_unknown_profile_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'gpu'.*cpu-smoke"):
        load_config("gpu")
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config("cpu-smoke", tmp_path / "absent.yaml")


def test_teacher_endpoints_and_execution_engine_are_configurable():
    config = load_config("cpu-smoke", sets=["teacher.base_url=[http://a:8000/v1, http://b:8000/v1]",
                                            "execution.engine=ray", "execution.address=ray://head:10001",
                                            "execution.shard_rows=1000"])
    assert config.teacher.base_urls() == ["http://a:8000/v1", "http://b:8000/v1"]
    assert (config.execution.engine, config.execution.address, config.execution.shard_rows) == \
        ("ray", "ray://head:10001", 1000)
    assert load_config("cpu-smoke").execution.engine == "local"  # `make run` needs no Ray
