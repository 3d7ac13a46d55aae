import pytest
import torch

from featgeo.errors import HubUnreachableError
from featgeo.models import (
    COMPONENTS,
    load_model,
    load_tokenizer,
    model_info,
    parse_components,
    parse_layers,
    resolve_model,
)
from featgeo.models.loading import resolve_device


def test_local_folder_loads_with_its_components(tiny_llama):
    info = model_info(load_model(tiny_llama))
    assert info.architecture == "LlamaForCausalLM"
    assert info.n_layers == 2 and info.hidden_size == 64
    assert info.components["mlp.down_proj"] == (64, 128)
    assert info.components["self_attn.k_proj"] == (32, 64)  # 2 KV heads x head_dim 16
    assert list(info.components) == list(COMPONENTS)


def test_tokenizer_round_trips_text(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    text = "The river runs north of the old city."
    assert tok.decode(tok(text)["input_ids"]) == text


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="pass its local folder with --model PATH"):
        resolve_model("someone/some-model-that-is-not-cached")


@pytest.mark.parametrize("spec", ["./no/such/folder", "~/no-such-model", "a/b/c"])
def test_missing_local_path_is_a_clear_error(spec):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(spec)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(tmp_path)


@pytest.mark.parametrize(
    "text,expected",
    [(None, [0, 1, 2, 3]), ("all", [0, 1, 2, 3]), ("1-2", [1, 2]), ("3,0,1-1", [0, 1, 3])],
)
def test_parse_layers(text, expected):
    assert parse_layers(text, 4) == expected


@pytest.mark.parametrize(
    "text,match",
    [
        ("4", "layer 4 does not exist"),
        ("-1", "must look like"),
        ("2-1", "must look like"),
        ("a", "must look like"),
    ],
)
def test_parse_layers_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_layers(text, 4)


def test_parse_components():
    assert parse_components("mlp.down_proj, self_attn.q_proj") == [
        "self_attn.q_proj",
        "mlp.down_proj",
    ]
    assert parse_components(None) == list(COMPONENTS)
    with pytest.raises(ValueError, match="this model's components are self_attn.q_proj, "):
        parse_components("mlp.fc1")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
