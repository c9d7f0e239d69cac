"""No secret out: URL credentials redacted by one function, refused in configs, and absent from a run's files."""

from __future__ import annotations

import json
import logging

import pytest

from flows import deployments, stages
from machinery import redact, store
from machinery.config import ConfigError, DedupConfig, load_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_server import redis_server


@pytest.mark.parametrize(("url", "redacted"), [
    ("https://user:sk-123@api.example.com/v1", "https://***@api.example.com/v1"),
    ("https://api.example.com/v1?key=sk-123&alt=json", "https://api.example.com/v1?key=***&alt=json"),
    ("redis://:pw@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
    ("rediss://default:pw@cache.example:6380/2?ssl_cert_reqs=none",
     "rediss://***@cache.example:6380/2?ssl_cert_reqs=none"),
    ("https://u:pa/ss@h/v1?access_token=t;X-Amz-Signature=s#top",
     "https://***@h/v1?access_token=***;X-Amz-Signature=***#top"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_a_url_loses_its_user_info_and_credential_query_values(url, redacted):
    assert redact.url(url) == redacted


def test_every_url_in_a_message_and_in_a_nested_payload_is_redacted():
    message = "endpoint https://u:k1@a.example/v1 failed; retrying on redis://:k2@b.example:6379/0."
    assert redact.text(message) == "endpoint https://***@a.example/v1 failed; retrying on redis://***@b.example:6379/0."
    payload = {"teacher": {"base_url": ["https://a.example/v1?api_key=k3"]}, "n": 4,
               "endpoints": {"https://u:k4@c.example/v1": {"requests": 2}}}
    assert redact.value(payload) == {"teacher": {"base_url": ["https://a.example/v1?api_key=***"]}, "n": 4,
                                     "endpoints": {"https://***@c.example/v1": {"requests": 2}}}


@pytest.mark.parametrize(("setting", "key"), [
    ("teacher.base_url=https://user:sk-planted@api.example.com/v1", "teacher.base_url"),
    ("teacher.base_url=[http://127.0.0.1:8000/v1, 'https://api.example.com/v1?key=sk-planted']", "teacher.base_url"),
    ("filter.judge={base_url: 'https://u:sk-planted@judge.example/v1', model: m}", "filter.judge.base_url"),
    ("dedup.redis_url=redis://:sk-planted@cache.example:6379/0", "dedup.redis_url"),
    ("dedup.redis_url=redis://cache.example:6379/0?password=sk-planted", "dedup.redis_url"),
])
def test_a_config_with_a_credential_in_a_url_is_refused_without_repeating_it(setting, key):
    with pytest.raises(ConfigError) as refused:
        load_config("tiny", sets=[setting])
    message = str(refused.value)
    assert f"{key}=" in message and "carries a credential" in message and "sk-planted" not in message


def test_a_flow_run_with_a_credential_in_a_url_parameter_is_refused_without_repeating_it():
    from prefect.exceptions import ParameterTypeError

    from flows import pipeline

    payload = load_config("tiny").model_dump(mode="json")
    payload["teacher"] |= {"backend": "openai", "base_url": "https://u:sk-planted@api.example.com/v1"}
    with pytest.raises(ParameterTypeError) as refused:
        pipeline.generate_flow.validate_parameters({"run_dir": "runs/x/v1", "config": payload})
    assert "teacher.base_url='https://***@api.example.com/v1' carries" in str(refused.value)
    assert "sk-planted" not in str(refused.value)


def test_deployment_parameters_hold_no_url_credentials():
    for spec in deployments.specs():
        text = json.dumps(deployments.parameters(spec, deployments.SOURCE))
        assert redact.text(text) == text, spec.full_name


def _trace_answers(run_dir):
    """A fake endpoint's replies: the right answer for a pulled problem, SOUND for the judge."""
    golds: dict[str, str] = {}

    def answer(prompt: str) -> str:
        if "Correct final answer" in prompt:
            return "SOUND"
        if not golds:
            frame = store.finished(run_dir, "dedup").read()
            golds.update(zip(frame["problem"].to_list(), frame["answer"].to_list(), strict=True))
        asked = max(golds, key=lambda p: prompt.rfind(json.dumps(p)[1:-1]))
        return f"<reasoning>Add the two numbers: the sum is {golds[asked]}.</reasoning><answer>{golds[asked]}</answer>"

    return answer


def test_no_secret_reaches_any_file_or_log_of_a_run(tmp_path, monkeypatch, caplog):
    """Teacher and judge keys and the Redis password are used, and appear in no file the run writes."""
    key, password = "sk-planted-6c1e0d", "redis-planted-93ab"
    run_dir = tmp_path / "runs" / "tiny" / "v1"
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis", password=password) as port, FakeOpenAI(answer=_trace_answers(run_dir)) \
            as server:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.setenv("DISTILLERY_REDIS_URL", f"redis://:{password}@127.0.0.1:{port}/0")
        config = load_config("tiny", sets=[
            "teacher.backend=openai", f"teacher.base_url={server.base_url}", "teacher.model=fake",
            "teacher.style=chat", f"filter.judge={{base_url: '{server.base_url}', model: judge}}",
            "dedup.index=redis", "build.drop_zero_advantage=false", "filter.min_tokens=1"])
        with caplog.at_level(logging.DEBUG):
            for stage in stages.CURATION:
                stages.run(stage, run_dir, config)
        assert server.authorizations == {f"Bearer {key}"}
    judged = json.loads((run_dir / "filter" / store.STATS).read_text())
    assert judged["kept"] > 0  # traces got past the judge: its key was sent too
    from data_cards.render import SETS, inline_markdown

    artifacts = "".join(inline_markdown(run_dir / "cards" / which) for which in SETS)  # Prefect's card artifacts
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    for secret in (key, password):
        assert not [p for p in written if secret.encode() in p.read_bytes()], secret
        assert secret not in caplog.text and secret not in artifacts


def test_redis_credentials_come_from_the_environment_not_the_config(monkeypatch):
    from curation.dedup_index import redis_url

    monkeypatch.setenv("DISTILLERY_REDIS_URL", "rediss://:pw-planted@cache.example:6380/1")
    assert redis_url(DedupConfig(index="redis")) == "rediss://:pw-planted@cache.example:6380/1"
    assert redis_url(DedupConfig(index="redis", redis_url="redis://cache.example:6380/1")) == \
        "rediss://:pw-planted@cache.example:6380/1"
    with pytest.raises(ValueError, match="names another server") as elsewhere:
        redis_url(DedupConfig(index="redis", redis_url="redis://attacker.example:6380/1"))
    assert "pw-planted" not in str(elsewhere.value)
