"""Profiles, config files and `--set` overrides resolve to one validated config."""

from __future__ import annotations

import pytest

from machinery.config import (
    DEFAULT_PROFILE,
    ConfigError,
    HubSource,
    ProceduralSource,
    load_config,
    profile_names,
)


def test_every_shipped_profile_validates_and_names_runnable_tasks_and_models():
    """A profile that loads also runs: its generators exist with safe scorers, and its models resolve."""
    from curation.sources import procedural
    from models import hf, registry

    assert {"cpu-smoke", "kaggle-tpu", "tiny", "tpu-pod"} <= set(profile_names())
    for name in profile_names():
        config = load_config(name)
        assert config.profile == name
        for source in [*config.sources, *config.eval.sets]:
            if isinstance(source, ProceduralSource):
                procedural.check_scorer(source.task, source.allow_unsafe_scorer)  # raises naming the task
        for model in (config.student.model, *([config.teacher.model] if config.teacher.backend == "tunix" else [])):
            assert model in (registry.EMBEDDED, registry.TINY) or hf.is_hub_id(model), f"{name}: {model!r}"


def test_the_default_profile_needs_no_network_and_no_ray():
    """`make run` works offline on a laptop: no Hub data, no teacher endpoint, the local engine."""
    config = load_config()
    assert config.profile == DEFAULT_PROFILE
    assert config.sources and not [s for s in [*config.sources, *config.eval.sets] if isinstance(s, HubSource)]
    assert config.teacher.backend == "tunix" and not config.teacher.base_urls()
    assert config.execution.engine == "local"


def test_set_values_are_read_as_yaml():
    config = load_config("cpu-smoke", sets=["teacher.n=2", "teacher.temperature=0.5", "teacher.model=a=b",
                                            "sources=[{kind: hub, id: openai/gsm8k, data_files: x.jsonl}]"])
    assert (config.teacher.n, config.teacher.temperature) == (2, 0.5)  # int and float, not strings
    assert config.teacher.model == "a=b"  # split at the first `=` only
    assert config.sources == [HubSource(id="openai/gsm8k", data_files="x.jsonl")]  # a list of mappings


def test_overrides_apply_profile_then_file_then_sets_in_order(tmp_path):
    base = load_config("cpu-smoke")
    path = tmp_path / "mine.yaml"
    path.write_text("dedup:\n  threshold: 0.7\nteacher:\n  model: qwen\n  n: 3\n"
                    "sources: [{kind: procedural, task: chain_sum, n: 2}]\n")
    config = load_config("cpu-smoke", path, sets=["teacher.n=5", "seed=1", "seed=2"])
    assert (config.dedup.threshold, config.teacher.model) == (0.7, "qwen")  # the file over the profile
    assert config.teacher.n == 5 and config.seed == 2  # `--set` over the file; the last `--set` wins
    # Mappings merge key by key (what the file does not name stays the profile's); lists are replaced whole.
    assert (config.teacher.backend, config.teacher.temperature, config.dedup.num_perm) == \
        (base.teacher.backend, base.teacher.temperature, base.dedup.num_perm)
    assert config.sources == [ProceduralSource(task="chain_sum", n=2)]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["teacher.n=0"], "teacher.n: .*greater than or equal to 1 .*got 0"),
        (["teacher.backend=grpc"], "teacher.backend: .*'openai' or 'tunix'.*got 'grpc'"),
        (["teacher.nn=3"], "teacher.nn: Extra inputs"),
        (["no_equals_sign"], "expected key=value"),
        (["=3"], "expected key=value"),
        (["teacher.model=[unclosed"], "--set teacher.model: value '\\[unclosed' is not valid YAML"),
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


def test_every_bad_key_of_a_config_file_is_named_at_once(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("teacher:\n  n: 0\n  colour: red\nsft:\n  steps: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_config("cpu-smoke", path)
    message = str(raised.value)
    assert "teacher.n:" in message and "teacher.colour: Extra inputs" in message and "sft.steps:" in message


@pytest.mark.parametrize(("text", "message"), [("teacher: [unclosed\n", "invalid YAML"),
                                               ("- a list\n", "expected a mapping of config keys, got list")])
def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: {message}"):
        load_config("cpu-smoke", path)


def test_unknown_profile_and_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'gpu'.*cpu-smoke"):
        load_config("gpu")
    with pytest.raises(ConfigError, match="config file not found: .*absent.yaml"):
        load_config("cpu-smoke", tmp_path / "absent.yaml")


def test_teacher_endpoints_read_as_one_url_or_several():
    one = load_config("cpu-smoke", sets=["teacher.backend=openai", "teacher.base_url=http://a:8000/v1"])
    several = load_config("cpu-smoke", sets=["teacher.base_url=[http://a:8000/v1, http://b:8000/v1]"])
    assert one.teacher.base_urls() == ["http://a:8000/v1"]
    assert several.teacher.base_urls() == ["http://a:8000/v1", "http://b:8000/v1"]


def test_the_ray_engine_takes_an_address_and_a_shard_size():
    config = load_config("cpu-smoke", sets=["execution.engine=ray", "execution.address=ray://head:10001",
                                            "execution.shard_rows=1000"])
    assert (config.execution.engine, config.execution.address, config.execution.shard_rows) == \
        ("ray", "ray://head:10001", 1000)
