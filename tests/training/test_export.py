"""The exported Hugging Face folder of every family: complete config.json, the source's tensors, same logits."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from models import hf, registry
from tests.support import hf_models
from training import export

CLASSES = {"qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "llama3": "LlamaConfig", "gemma3": "Gemma3TextConfig"}
# Fields that say who wrote the file, not what the model is
PROVENANCE = {"architectures", "_name_or_path", "dtype", "torch_dtype", "transformers_version"}


def _logits(model, ids):
    import jax.numpy as jnp

    tokens = jnp.asarray([ids], dtype=jnp.int32)
    mask = jnp.tril(jnp.ones((len(ids), len(ids)), dtype=jnp.bool_))[None]
    return np.asarray(model(tokens, jnp.arange(len(ids))[None], None, mask)[0][0], dtype=np.float32)


@pytest.fixture(scope="module", params=tuple(hf_models.FAMILIES))
def exported(request, tmp_path_factory):
    """(family, source folder, loaded source, exported folder): the source model written back out unchanged."""
    root = tmp_path_factory.mktemp(request.param)
    source = hf_models.write(request.param, root / "source")
    loaded = registry.load(str(source))
    export.write(loaded, loaded.model, root / "model", dtype="float32")
    return request.param, source, loaded, root / "model"


def test_config_json_holds_every_field_of_the_family_class_with_the_sources_values(exported):
    family, source, _, out = exported
    config_class = getattr(hf.transformers_module(), CLASSES[family])
    written = json.loads((out / "config.json").read_text())
    assert set(config_class().to_dict()) - PROVENANCE <= set(written)
    theirs = config_class.from_dict(json.loads((source / "config.json").read_text())).to_dict()
    ours = config_class.from_dict(copy.deepcopy(written)).to_dict()  # from_dict edits nested dicts in place
    assert {k: v for k, v in ours.items() if k not in PROVENANCE} == {k: v for k, v in theirs.items()
                                                                       if k not in PROVENANCE}
    assert written["architectures"] == hf_models.FAMILIES[family].config["architectures"]
    # The rope and window under the keys transformers 4 and vLLM builds on it read, too
    raw = hf_models.FAMILIES[family].config
    assert written["rope_theta"] == raw["rope_theta"] and written["rope_scaling"] == raw.get("rope_scaling")
    if family == "gemma3":
        assert written["sliding_window"] == 8 and written["rope_local_base_freq"] == 10_000.0
        assert written["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 8.0,
                                                                "rope_theta": 1_000_000.0}


def test_tensors_tokenizer_and_generation_config_are_the_sources(exported):
    from safetensors.numpy import load_file

    _, source, _, out = exported
    theirs, ours = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)  # nothing trained: the very same numbers
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()


def test_the_export_reloads_with_the_same_logits(exported):
    family, _, loaded, out = exported
    again = registry.load(str(out))
    ids = list(range(5, 45))
    assert again.family == family
    np.testing.assert_allclose(_logits(again.model, ids), _logits(loaded.model, ids), atol=1e-5)


def test_bfloat16_export_is_bfloat16_throughout(tmp_path):
    source = hf_models.write("qwen2", tmp_path / "source")
    loaded = registry.load(str(source), dtype="bfloat16")
    export.write(loaded, loaded.model, tmp_path / "model", dtype="bfloat16")
    header = hf._header(tmp_path / "model" / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    assert written["dtype"] == written["torch_dtype"] == "bfloat16"
    again = registry.load(str(tmp_path / "model"), dtype="bfloat16")
    np.testing.assert_array_equal(_logits(again.model, [5, 6, 7]), _logits(loaded.model, [5, 6, 7]))


def test_the_embedded_style_gemma_exports_gemma3_270m_style_settings(tmp_path):
    """A model with no Hugging Face folder (the tiny one, like the GGUF 270M) gets its Tunix config's values."""
    tiny = registry.load(registry.TINY)
    export.write(tiny, tiny.model, tmp_path / "model", dtype="float32")
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    config = tiny.config
    assert (written["num_hidden_layers"], written["hidden_size"], written["head_dim"], written["sliding_window"],
            written["vocab_size"]) == (config.num_layers, config.embed_dim, config.head_dim,
                                       config.sliding_window_size, config.num_embed)
    tokenizer_config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    assert tokenizer_config["bos_token"] == "<bos>" and "<start_of_turn>" in tokenizer_config["chat_template"]
    again = registry.load(str(tmp_path / "model"))
    np.testing.assert_allclose(_logits(again.model, [2, 40, 41, 42]), _logits(tiny.model, [2, 40, 41, 42]), atol=1e-5)


READ_WITHOUT_PROTOBUF = """
import json, sys
sys.modules["google.protobuf"] = sys.modules["sentencepiece"] = None  # a reader that has neither installed
import transformers
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps([tokenizer(text)["input_ids"] for text in json.loads(sys.argv[2])]))
"""


def test_the_embedded_model_exports_a_tokenizer_json_that_transformers_reads_without_protobuf(tmp_path):
    """transformers 5 reads a tokenizer.model-only folder through protobuf; tokenizer.json spares its readers that."""
    import subprocess
    import sys

    embedded = registry.load(registry.EMBEDDED)
    export.write(embedded, embedded.model, tmp_path / "model", dtype="bfloat16")
    texts = [*export.PROBES, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.", "  \t\n x ", "Ωmega ≈ 3.14…"]
    read = subprocess.run([sys.executable, "-c", READ_WITHOUT_PROTOBUF, str(tmp_path / "model"), json.dumps(texts)],
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr[-2000:]
    ids = json.loads(read.stdout.strip().splitlines()[-1])
    assert ids == [[embedded.tokenizer.bos_id(), *embedded.tokenizer.encode(text)] for text in texts]


def test_no_tokenizer_json_when_the_conversion_would_encode_differently(tmp_path, caplog):
    """The tiny model's sentencepiece is not Gemma's BPE: transformers' converter splits its spaces into bytes."""
    tiny = registry.load(registry.TINY)
    with caplog.at_level("WARNING"):
        export.write(tiny, tiny.model, tmp_path / "model", dtype="float32")
    assert not (tmp_path / "model" / "tokenizer.json").exists() and (tmp_path / "model" / "tokenizer.model").is_file()
    assert "no tokenizer.json" in caplog.text
