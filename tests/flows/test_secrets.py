"""Keys go only where the worker's operator allows: allowed variables, to allowed hosts."""

from __future__ import annotations

import pytest

from flows.secrets import (
    KEY_ENVS,
    KEY_HOSTS,
    SecretError,
    judge_api_key,
    teacher_api_key,
)
from machinery.config import JudgeConfig, TeacherConfig


@pytest.fixture(autouse=True)
def _operator_defaults(monkeypatch):
    """Each test starts from the defaults: no allow-list variables, a known OpenAI key."""
    monkeypatch.delenv(KEY_ENVS, raising=False)
    monkeypatch.delenv(KEY_HOSTS, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("HF_TOKEN", "hf_planted")


def _teacher(base_url, **options) -> TeacherConfig:
    return TeacherConfig(backend="openai", base_url=base_url, model="m", **options)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:8080/v1",
                                 "https://api.openai.com/v1",
                                 "https://generativelanguage.googleapis.com/v1beta/openai/"])
def test_by_default_the_openai_key_goes_to_loopback_and_the_openai_and_gemini_apis(url):
    assert teacher_api_key(_teacher(url)) == "sk-openai"


@pytest.mark.parametrize("variable", ["HF_TOKEN", "HOME", "AWS_SECRET_ACCESS_KEY"])
def test_a_config_cannot_name_a_variable_the_operator_did_not_allow(variable):
    with pytest.raises(SecretError) as refused:
        teacher_api_key(_teacher("http://127.0.0.1:8000/v1", api_key_env=variable))
    message = str(refused.value)
    assert f"teacher.api_key_env={variable!r}" in message and KEY_ENVS in message and "hf_planted" not in message


def test_an_allowed_key_is_not_sent_to_a_host_the_operator_did_not_allow():
    with pytest.raises(SecretError, match=r"teacher.base_url 'https://evil.example/v1'.*DISTILLERY_KEY_HOSTS"):
        teacher_api_key(_teacher("https://evil.example/v1"))
    # One endpoint outside the list refuses them all: the key would reach it in turn.
    with pytest.raises(SecretError, match="lookalike"):
        teacher_api_key(_teacher(["http://127.0.0.1:8000/v1", "https://api.openai.com.lookalike.example/v1"]))


def test_the_operator_allows_more_variables_and_hosts_in_the_workers_environment(monkeypatch):
    monkeypatch.setenv(KEY_ENVS, "VLLM_KEY, OPENAI_API_KEY")
    monkeypatch.setenv(KEY_HOSTS, "vllm.internal,*.corp.example")
    monkeypatch.setenv("VLLM_KEY", "sk-vllm")
    assert teacher_api_key(_teacher("http://vllm.internal:8000/v1", api_key_env="VLLM_KEY")) == "sk-vllm"
    assert teacher_api_key(_teacher(["https://a.corp.example/v1", "https://b.corp.example/v1"])) == "sk-openai"
    # The list replaces the defaults: loopback is no longer listed, nor is the bare domain.
    for url in ("http://127.0.0.1:8000/v1", "https://corp.example/v1"):
        with pytest.raises(SecretError, match=KEY_HOSTS):
            teacher_api_key(_teacher(url))


def test_an_endpoint_that_needs_no_key_sends_none():
    assert teacher_api_key(_teacher("http://gpu-box:8000/v1", api_key_env=None)) is None


def test_an_unset_allowed_variable_sends_no_key_to_any_host(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert teacher_api_key(_teacher("http://gpu-box:8000/v1")) is None


def test_a_secret_block_follows_the_host_rule_and_is_not_read_for_a_host_outside_it():
    # No Prefect server is needed: the host is refused before the block is loaded.
    with pytest.raises(SecretError, match="the Prefect Secret block 'teacher-key' may go only"):
        teacher_api_key(_teacher("https://evil.example/v1", api_key_block="teacher-key"))


def test_the_judges_key_follows_the_same_rules():
    judge = JudgeConfig(base_url="http://127.0.0.1:9000/v1", model="j")
    assert judge_api_key(judge) == "sk-openai"
    with pytest.raises(SecretError, match="filter.judge.api_key_env='HF_TOKEN'"):
        judge_api_key(judge.model_copy(update={"api_key_env": "HF_TOKEN"}))
    with pytest.raises(SecretError, match="filter.judge.base_url 'https://evil.example/v1'"):
        judge_api_key(JudgeConfig(base_url="https://evil.example/v1", model="j"))


def test_the_embedded_teacher_needs_no_key_whatever_the_config_names():
    assert teacher_api_key(TeacherConfig(backend="tunix", api_key_env="HF_TOKEN")) is None
