"""The one typed pipeline config: named profiles (YAML), a config file, then `--set` overrides.

Keys are stable (docs/architecture.md "Interfaces"): `seed`, `sources`, `teacher.*`, `filter.*`,
`dedup.*`, `student.model`, `sft.*`, `grpo.*`, `eval.*`, `mesh.*`, `execution.*`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from machinery import redact

PROFILES_PACKAGE = "machinery.profiles"
DEFAULT_PROFILE = "cpu-smoke"


class ConfigError(Exception):
    """A profile, config file or override is invalid; the message names the key and value."""


class _Strict(BaseModel):
    """Frozen, and unknown keys are errors rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ProceduralSource(_Strict):
    """Problems from a seeded reasoning-gym generator."""

    kind: Literal["procedural"] = "procedural"
    task: str
    n: int = Field(default=50, ge=1)
    seed: int | None = None  # None: the run's seed
    options: dict[str, Any] = Field(default_factory=dict)  # the generator's own config, e.g. max_terms
    # A task whose scorer is not reviewed safe (some eval() the answer) loads only with this set; the verifier
    # then scores it in a subprocess with a time limit (curation.sources.procedural).
    allow_unsafe_scorer: bool = False


class HubSource(_Strict):
    """A Hugging Face Hub dataset, or local files in its format (`data_files`)."""

    kind: Literal["hub"] = "hub"
    id: str
    split: str = "train"
    data_files: str | list[str] | None = None
    config: str | None = None
    revision: str | None = None
    limit: int | None = Field(default=None, ge=1)


Source = Annotated[ProceduralSource | HubSource, Field(discriminator="kind")]


def _no_credentials(url: str, key: str, instead: str) -> str:
    """`url` if it carries no credential; else ValueError naming the key, what it carries and `instead`.

    The config is written to config.yaml and manifests and is a Prefect flow run's parameter:
    a credential in it would be stored in all of them, so it comes from the worker instead.
    """
    found = redact.credentials(url)
    if found:
        raise ValueError(f"{key}={redact.url(url)!r} carries a credential ({', '.join(found)}); a config is "
                         f"written to config.yaml, manifests and Prefect's flow-run parameters, so give the URL "
                         f"without it and {instead}")
    return url


def _http_url(url: str, key: str) -> str:
    """`url` if it is an http(s) URL with a host and no credential; ValueError naming the key otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{key} must be an http(s) URL such as http://127.0.0.1:8000/v1, got {redact.url(url)!r}")
    section = key.rpartition(".")[0]
    return _no_credentials(url, key, f"put the key in the variable named by {section}.api_key_env or the Prefect "
                                     f"Secret block named by {section}.api_key_block")


class Price(_Strict):
    """What an endpoint charges, in dollars per million tokens: `input` (prompt) and `output` (completion)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)

    def pair(self) -> tuple[float, float]:
        """(input, output), as `curation.teacher.cost` takes it."""
        return self.input, self.output


class TeacherConfig(_Strict):
    """Which model writes the reasoning traces, and how it is sampled."""

    backend: Literal["openai", "tunix"] = "tunix"
    # One endpoint, or several serving the same model (vLLM replicas, providers): each request goes
    # to the one with the fewest requests in flight (curation.teacher.endpoints).
    base_url: str | list[str] | None = None
    # openai: the served model's name; tunix: a registry name, a Hub id or a local Hugging Face folder
    model: str = "gemma3-270m"
    revision: str | None = None  # tunix backend, Hub ids: a branch, tag or commit (None: main)
    # The name of the variable holding the key, never the key itself (None: send no key). The worker
    # sends only variables its operator allows, to hosts its operator allows (flows.secrets).
    api_key_env: str | None = "OPENAI_API_KEY"
    api_key_block: str | None = None  # or the name of a Prefect Secret block holding the key (it wins)
    n: int = Field(default=4, ge=1)
    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1)
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    style: Literal["chat", "completion"] = "chat"  # completion: few-shot text for base models
    native_n: bool = True  # ask for n choices in one request; falls back to one request per sample
    max_attempts: int = Field(default=6, ge=1)  # per request, retries included
    # An endpoint that fails this many requests in a row is benched for bench_s seconds, then tried again.
    bench_after: int = Field(default=3, ge=1)
    bench_s: float = Field(default=30.0, gt=0)
    # Dollars per million tokens, for the cost in stats and cards (None: tokens only). One price for
    # every endpoint, or a list aligned with a base_url list (providers charge differently).
    price: list[Price] | None = None

    @field_validator("price", mode="before")
    @classmethod
    def _one_price(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value  # one {input, output}: the price of every endpoint

    @field_validator("base_url")
    @classmethod
    def _urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str):
            return _http_url(value, "teacher.base_url")
        if isinstance(value, list):
            if not value:
                raise ValueError("teacher.base_url is an empty list; give one URL or several")
            for url in value:
                _http_url(url, "teacher.base_url")
            repeated = sorted({url for url in value if value.count(url) > 1})
            if repeated:
                raise ValueError(f"teacher.base_url lists {repeated[0]!r} more than once")
        return value

    def base_urls(self) -> list[str]:
        """The endpoints as a list (empty when none is configured)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @model_validator(mode="after")
    def _prices(self) -> TeacherConfig:
        if self.price is not None and len(self.price) not in (1, len(self.base_urls())):
            raise ValueError(f"teacher.price lists {len(self.price)} prices for {len(self.base_urls())} "
                             "teacher.base_url endpoints: give one {input, output} for all, or one per "
                             "base_url entry, in the same order")
        return self

    def prices(self) -> list[tuple[float, float] | None]:
        """Each endpoint's price (dollars per million input and output tokens), aligned with `base_urls()`."""
        count = max(1, len(self.base_urls()))
        if self.price is None:
            return [None] * count
        return [p.pair() for p in self.price] if len(self.price) == count else [self.price[0].pair()] * count


class JudgeConfig(_Strict):
    """An LLM judge behind an OpenAI-compatible endpoint: is the reasoning sound, not only the answer?"""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # as teacher.api_key_env: a name the worker allows, or None
    api_key_block: str | None = None  # or a Prefect Secret block holding the key (it wins)
    concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    max_new_tokens: int = Field(default=128, ge=1)
    price: Price | None = None  # dollars per million tokens, for the judge's cost in stats and cards

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, "filter.judge.base_url")


class FilterConfig(_Strict):
    """Trace filtering and best-of-N selection."""

    keep_per_problem: int = Field(default=2, ge=1)
    min_tokens: int = Field(default=4, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)  # None: anything the teacher finished
    max_repeated_ngram_share: float = Field(default=0.5, gt=0.0, le=1.0)  # degenerate loops
    min_latin_share: float = Field(default=0.9, ge=0.0, le=1.0)  # target language: English
    similar_threshold: float = Field(default=0.8, gt=0.0, le=1.0)  # near-identical traces of one problem
    check_deadline_s: float = Field(default=10.0, gt=0)  # per answer check, in a process pool
    check_steps: bool = True  # reject traces that state a false arithmetic claim (curation.steps)
    judge: JudgeConfig | None = None  # ask an LLM judge about traces that passed every other check
    # Procedural tasks whose scorer evaluates code, allowed to score (in a subprocess with a time
    # limit): `Config.filter_stage` adds every source and eval set with `allow_unsafe_scorer: true`.
    unsafe_scorers: list[str] = Field(default_factory=list)


class DedupConfig(_Strict):
    """Exact and MinHash near-duplicate removal, and decontamination against eval sets."""

    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    num_perm: int = Field(default=128, ge=8)
    shingle: int = Field(default=5, ge=1)
    bands: int | None = Field(default=None, ge=1)  # None: chosen from threshold, then recorded
    rows: int | None = Field(default=None, ge=1)
    # Problems training must not contain (exact or near copies are `contaminated`): Hub benchmarks
    # (also matched by shared word n-grams) and procedural sets. The run's own eval.sets are added
    # by `Config.dedup_stage`, so a profile lists them once.
    eval_sets: list[Source] = Field(default_factory=list)
    ngram: int = Field(default=13, ge=3)  # decontamination n-gram length in words
    max_ngram_df: int = Field(default=10, ge=1)  # n-grams in more training docs are boilerplate
    index: Literal["local", "redis"] = "local"
    # redis:// or rediss:// (TLS) host, port and db; a password comes from the worker's
    # $DISTILLERY_REDIS_URL (curation.dedup_index), never from the config.
    redis_url: str | None = None

    @field_validator("eval_sets", mode="before")
    @classmethod
    def _hub_by_default(cls, value: Any) -> Any:
        # Before procedural sets were allowed here every entry was a Hub set, written without `kind`.
        if isinstance(value, list):
            return [{"kind": "hub", **item} if isinstance(item, dict) and "kind" not in item else item
                    for item in value]
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss") or not parsed.netloc:
            raise ValueError(f"dedup.redis_url must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379/0, "
                             f"got {redact.url(value)!r}")
        return _no_credentials(value, "dedup.redis_url", "set the whole URL, credentials included, in "
                                                         "$DISTILLERY_REDIS_URL on the machines that run dedup")


class BuildConfig(_Strict):
    """The SFT and GRPO sets."""

    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)  # of problems, not of traces
    drop_zero_advantage: bool = True  # GRPO: drop problems the teacher always or never solved


class StudentConfig(_Strict):
    """The model being trained: a registry name, a Hub id (`Qwen/Qwen2.5-Math-1.5B`) or a local HF folder."""

    model: str = "gemma3-270m"
    revision: str | None = None  # Hub ids: a branch, tag or commit hash (None: main); the commit is recorded
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights as loaded, trained and exported


class LoraConfig(_Strict):
    """The LoRA adapter (qwix) put on the student's attention and MLP projections."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    # qwix module-path regex: the attention and MLP projections of every Tunix family (Gemma 3's
    # q/kv/out einsums; Qwen's and Llama's q/k/v/o projections), never the embedding or the head
    targets: str = ".*(q_einsum|kv_einsum|attn_vec_einsum|q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class MeshConfig(_Strict):
    """The device mesh: fsdp x tp must equal the device count; (1, 1) on one CPU means no mesh."""

    fsdp: int | None = Field(default=None, ge=1)  # None: every device on fsdp
    tp: int = Field(default=1, ge=1)
    # A TPU pod: one process per host, jax.distributed.initialize() before any device is used
    multihost: bool = False


class SftConfig(_Strict):
    """LoRA supervised warmup on the SFT set."""

    steps: int = Field(default=20, ge=0)
    batch_size: int = Field(default=2, ge=1)
    max_length: int = Field(default=256, ge=8)  # prompt + completion tokens; longer rows are rejected
    learning_rate: float = Field(default=1e-4, gt=0)
    eval_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=10, ge=1)
    lora: LoraConfig = LoraConfig()


class GrpoConfig(_Strict):
    """GRPO on the prompt set: a fresh LoRA on the student with the SFT adapter merged in."""

    steps: int = Field(default=4, ge=0)
    batch_size: int = Field(default=1, ge=1)  # prompts per step
    num_generations: int = Field(default=2, ge=2)
    beta: float = Field(default=0.08, ge=0)
    epsilon: float = Field(default=0.2, gt=0)
    learning_rate: float = Field(default=3e-6, gt=0)
    temperature: float = Field(default=0.9, gt=0)
    # Longer prompts are rejected, and counted; rollouts pad to the longest kept prompt (rounded up to 32), not to this.
    max_prompt_length: int = Field(default=256, ge=8)
    max_new_tokens: int = Field(default=128, ge=1)
    checkpoint_every: int = Field(default=2, ge=1)
    # distillery: our decode loop (models.decode) as Tunix's rollout engine (Gemma 3; other families
    # fall back to vanilla); vanilla: Tunix's Sampler; vllm / sglang_jax: Tunix's engines on those
    # servers (their packages on a TPU host)
    rollout_engine: Literal["distillery", "vanilla", "vllm", "sglang_jax"] = "distillery"
    top_k: int = Field(default=64, ge=1)  # sample among the top k tokens (the distillery engine: 64 only)


class EvalConfig(_Strict):
    """Held-out accuracy and format compliance: base, after SFT, after GRPO."""

    # Held-out problems (procedural with their own seed, or Hub test splits); empty: the GRPO validation split
    sets: list[Source] = Field(default_factory=list)
    limit: int | None = Field(default=32, ge=1)  # problems per set
    max_new_tokens: int = Field(default=128, ge=1)
    pass_k: int = Field(default=1, ge=1)  # > 1: also pass@k with k samples at the temperature below
    temperature: float = Field(default=0.8, gt=0)
    batch_size: int = Field(default=16, ge=1)


class OrchestrationConfig(_Strict):
    """Prefect schedules and where training runs."""

    refresh_cron: str = "0 3 * * 1"  # the refresh deployment: weekly, Monday 03:00
    nightly_cron: str = "0 2 * * *"  # the nightly curate-and-train deployment (served paused)
    # A deployment name, e.g. "tpu": curate-and-train hands sft/grpo/eval to `<stage>/<name>` with
    # run_deployment (a TPU work pool in production) instead of running them in its own process.
    training_deployment: str | None = None


class PublishConfig(_Strict):
    """`publish.*`: where curate-and-train pushes the cards and model at the end (`distillery push`); no repo: none."""

    repo: str | None = Field(default=None, pattern=r"^[^/\s]+/[^/\s]+$")  # ORG/NAME: the model; -sft, -grpo: cards
    private: bool = True
    token_block: str | None = None  # a Prefect Secret block holding the token; None: $HF_TOKEN on the worker


class ExecutionConfig(_Strict):
    """Where the curation stages' per-row work runs; never part of a stage's key.

    `local`: in this process. `ray`: as Ray tasks on a cluster (machinery.execution), whose
    nodes must all see the run folder (shared storage). A run made with one engine is
    complete for the other: outputs are the same, so a stage done on `ray` is skipped on
    `local` and the other way round.
    """

    engine: Literal["local", "ray"] = "local"
    # ray only. None or "": start a Ray instance on this machine; "auto": the cluster this machine
    # belongs to; "ray://host:10001": a remote cluster through Ray Client; "host:6379": its GCS.
    address: str | None = None
    shard_rows: int = Field(default=50_000, ge=1)  # rows per shard: the unit of Ray work and of resume

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if not value or value == "auto":
            return value or None
        if value.startswith("ray://"):
            host_port = value.removeprefix("ray://")
        else:
            host_port = value
        host, sep, port = host_port.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"execution.address must be empty, 'auto', 'ray://host:port' or 'host:port', "
                             f"got {value!r}")
        return value


class PullSettings(_Strict):
    """Limits on what a source row may hold (the `pull.*` keys)."""

    # A problem longer than this is a broken or hostile row, not a math problem (MATH-500's longest: ~1,800)
    max_chars: int = Field(default=20_000, ge=1)
    # Gold answers are a few dozen characters; the verifier refuses golds over 2,000 (curation.answers).
    max_answer_chars: int = Field(default=2_000, ge=1)
    max_solution_chars: int = Field(default=50_000, ge=1)


class PullConfig(_Strict):
    """What the pull stage needs: the seed, the sources and the row limits."""

    seed: int = 0
    sources: list[Source] = Field(min_length=1)
    max_chars: int = Field(default=20_000, ge=1)
    max_answer_chars: int = Field(default=2_000, ge=1)
    max_solution_chars: int = Field(default=50_000, ge=1)


class Config(_Strict):
    """The whole pipeline's config."""

    profile: str = DEFAULT_PROFILE
    seed: int = 0
    sources: list[Source] = Field(min_length=1)
    pull: PullSettings = PullSettings()
    teacher: TeacherConfig = TeacherConfig()
    filter: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    build: BuildConfig = BuildConfig()
    student: StudentConfig = StudentConfig()
    sft: SftConfig = SftConfig()
    grpo: GrpoConfig = GrpoConfig()
    eval: EvalConfig = EvalConfig()
    mesh: MeshConfig = MeshConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    publish: PublishConfig = PublishConfig()
    execution: ExecutionConfig = ExecutionConfig()

    def pull_stage(self) -> PullConfig:
        """The pull stage's part of the config."""
        return PullConfig(seed=self.seed, sources=self.sources, max_chars=self.pull.max_chars,
                          max_answer_chars=self.pull.max_answer_chars,
                          max_solution_chars=self.pull.max_solution_chars)

    def filter_stage(self) -> FilterConfig:
        """The checks' part (filter stage, GRPO reward, eval): `filter.*`, with the allowed unsafe scorers' tasks."""
        allowed = [s.task for s in [*self.sources, *self.eval.sets, *self.dedup.eval_sets]
                   if isinstance(s, ProceduralSource) and s.allow_unsafe_scorer]
        return self.filter.model_copy(update={"unsafe_scorers": sorted({*self.filter.unsafe_scorers, *allowed})})

    def dedup_stage(self) -> DedupConfig:
        """The dedup stage's part: `dedup.*`, with the held-out `eval.sets` among the sets to decontaminate against.

        A procedural set without a seed gets the run's, as the eval stage loads it.
        """
        seeded = [s.model_copy(update={"seed": self.seed}) if isinstance(s, ProceduralSource) and s.seed is None
                  else s for s in [*self.dedup.eval_sets, *self.eval.sets]]
        return self.dedup.model_copy(update={"eval_sets": [s for i, s in enumerate(seeded) if s not in seeded[:i]]})


def profile_names() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(PROFILES_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    """Parse a YAML mapping, naming the file on error."""
    try:
        payload = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: invalid YAML: {err}") from err
    if not isinstance(payload, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(payload).__name__}")
    return payload


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; lists and scalars in override replace those in base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_set(payload: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `key.sub=value` override; the value is parsed as YAML ("2" -> 2, "[a]" -> list)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. teacher.n=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {err}") from err
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return _merge(payload, nested)


def load_config(
    profile: str | None = None,
    config_file: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve profile -> config file -> `--set` overrides into one validated Config."""
    name = profile or DEFAULT_PROFILE
    if name not in profile_names():
        raise ConfigError(f"unknown profile {name!r}; profiles: {', '.join(profile_names())}")
    text = resources.files(PROFILES_PACKAGE).joinpath(f"{name}.yaml").read_text()
    payload = _read_yaml(text, f"profile {name}")
    payload["profile"] = name
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        payload = _merge(payload, _read_yaml(path.read_text(), str(path)))
    for assignment in sets:
        payload = _apply_set(payload, assignment)
    try:
        return Config.model_validate(payload)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def _describe(err: ValidationError) -> str:
    """One line per bad key: `teacher.n: Input should be greater than or equal to 1 (got 0)`."""
    lines = []
    for issue in err.errors():
        key = ".".join(str(p) for p in issue["loc"])
        lines.append(f"{key or '<config>'}: {issue['msg']} (got {redact.value(issue.get('input'))!r})")
    return "invalid config: " + "; ".join(lines)
