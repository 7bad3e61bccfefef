"""Text encoders: the bundled MiniLM, and T5 / CLIP text towers built tiny and saved in the test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infinity_lit.generator.text_encoders import (
    CLIPTextEncoder,
    MiniLMTextEncoder,
    T5TextEncoder,
    TextFeatures,
    build_text_encoder,
)

CAPTIONS = ["grinning face", "a red apple on the table next to a green pear", ""]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder(max_length=32)


def _check_frozen(enc) -> None:
    assert not enc.training and not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())


def _check_padding_invariance(enc, captions, atol=1e-5) -> None:
    """A caption's features do not depend on the other captions of its batch (padding is masked)."""
    batch = enc(captions)
    for i, c in enumerate(captions):
        alone = enc([c])
        n = int(alone.mask.sum())
        assert int(batch.mask[i].sum()) == n
        torch.testing.assert_close(batch.tokens[i, :n], alone.tokens[0, :n], atol=atol, rtol=0)
        torch.testing.assert_close(batch.pooled[i], alone.pooled[0], atol=atol, rtol=0)
        assert torch.all(batch.tokens[i, n:] == 0)


def test_minilm_shapes_frozen_and_pooling(minilm):
    _check_frozen(minilm)
    out = minilm(CAPTIONS)
    assert isinstance(out, TextFeatures)
    B, _T, C = out.tokens.shape
    assert (B, C) == (3, 384) and minilm.dim == 384 and out.tokens.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.sum(1).min() >= 2  # [CLS] and [SEP] at least
    # pooled is the masked mean of the token features, computed here by hand
    for i in range(B):
        n = int(out.mask[i].sum())
        torch.testing.assert_close(out.pooled[i], out.tokens[i, :n].mean(0), atol=1e-6, rtol=0)
    _check_padding_invariance(minilm, CAPTIONS)
    with torch.enable_grad():
        assert not minilm(["x"]).pooled.requires_grad


def test_minilm_weights_are_the_trained_ones(minilm):
    """Real sentence-embedding weights rank a paraphrase above an unrelated caption (random ones would not)."""
    p = F.normalize(minilm(["a smiling face", "a grinning face", "a red sports car"]).pooled, dim=-1)
    assert (p[0] @ p[1]) > (p[0] @ p[2]) + 0.2


def test_minilm_truncates(minilm):
    long = " ".join(["word"] * 100)
    with pytest.warns(UserWarning, match="1 of 1 caption.*limit of 32 tokens"):
        assert minilm([long]).tokens.shape[1] == 32


def test_cache_memory_and_disk(tmp_path, minilm):
    enc = MiniLMTextEncoder(max_length=32, cache_dir=tmp_path)
    calls = []
    original = enc._encode
    enc._encode = lambda caps: calls.append(list(caps)) or original(caps)
    ref = minilm(CAPTIONS)
    a = enc([*CAPTIONS, "grinning face"])
    assert calls == [CAPTIONS]  # each distinct caption encoded once
    torch.testing.assert_close(a.pooled[:3], ref.pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooled[3], ref.pooled[0], atol=0, rtol=0)
    b = enc(CAPTIONS[::-1])
    assert len(calls) == 1
    torch.testing.assert_close(b.pooled, a.pooled[:3].flip(0), atol=0, rtol=0)
    # a fresh instance with the same identity reads the disk cache; another identity does not
    enc2 = MiniLMTextEncoder(max_length=32, cache_dir=tmp_path)
    enc2._encode = lambda caps: pytest.fail("should have been read from the disk cache")
    torch.testing.assert_close(enc2(CAPTIONS).tokens, a.tokens[:3, : enc2(CAPTIONS).tokens.shape[1]])
    enc3 = MiniLMTextEncoder(max_length=16, cache_dir=tmp_path)
    assert enc3.identity != enc.identity and enc3.cache_dir != enc.cache_dir


def test_bad_inputs(minilm, tmp_path):
    with pytest.raises(TypeError, match="list of strings"):
        minilm("a single string")
    with pytest.raises(ValueError, match="text_encoder_path"):
        build_text_encoder("t5")
    with pytest.raises(FileNotFoundError, match="text_encoder_path"):
        build_text_encoder("clip", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("gpt")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- tiny T5 / CLIP

WORDS = "a red apple on the table next to green pear grinning face".split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path = tmp_path_factory.mktemp("tiny_t5")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0) for w in WORDS] + [(c, -5.0) for c in LETTERS]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(path)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(cfg).save_pretrained(path)
    return path


def test_t5_matches_direct_model_call(tiny_t5_dir):
    from transformers import T5EncoderModel

    enc = build_text_encoder("t5", path=tiny_t5_dir, max_length=32)
    assert isinstance(enc, T5TextEncoder) and enc.dim == 32
    _check_frozen(enc)
    caps = ["a red apple", "grinning face on the table xyz"]
    out = enc(caps)
    ref_model = T5EncoderModel.from_pretrained(tiny_t5_dir).eval()
    for i, c in enumerate(caps):
        ids = enc.tokenizer([c], return_tensors="pt")["input_ids"]
        assert ids[0, -1] == 1  # </s> closes every caption
        with torch.no_grad():
            ref = ref_model(input_ids=ids).last_hidden_state[0]
        n = ids.shape[1]
        assert int(out.mask[i].sum()) == n
        torch.testing.assert_close(out.tokens[i, :n], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.pooled[i], ref.mean(0), atol=1e-5, rtol=1e-5)
    _check_padding_invariance(enc, caps)


def test_truncation_warns_once_per_call_with_count_and_limit(tiny_t5_dir, tmp_path):
    import warnings

    enc = build_text_encoder("t5", path=tiny_t5_dir, max_length=8, cache_dir=tmp_path)
    # Tiny T5 tokens: one per word, plus </s>. 7 words + </s> = 8 tokens fit; 8 or 10 words do not.
    fits = "a red apple on the table next"
    over = ["a red apple on the table next to", "a red apple on the table next to green pear"]
    assert [len(enc.tokenizer(c)["input_ids"]) for c in (fits, *over)] == [8, 9, 11]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc([fits, "grinning face"])  # nothing truncated, no warning
    with pytest.warns(UserWarning) as caught:
        out = enc([over[0], fits, over[1], over[1]])
    assert [str(w.message) for w in caught] == [
        "3 of 4 caption(s) exceed the t5 text encoder's limit of 8 tokens and were truncated; raise "
        "max_length (the generator's text_max_length) or shorten them"
    ]
    assert out.tokens.shape[1] == 8 and out.mask.sum(1).tolist() == [8, 8, 8, 8]
    # Cached captions are counted too: the warning is about this call's captions.
    enc._encode = lambda caps: pytest.fail("should come from the cache")
    with pytest.warns(UserWarning, match="^1 of 1 caption"):
        enc([over[1]])


def test_clip_pooled_is_the_eos_feature(tiny_clip_dir):
    enc = build_text_encoder("clip", path=tiny_clip_dir, max_length=32)
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 32
    _check_frozen(enc)
    caps = ["a red apple", "face"]
    out = enc(caps)
    for i, c in enumerate(caps):
        ids = enc.tokenizer([c])["input_ids"][0]
        assert ids[0] == 0 and ids[-1] == 1
        eos = len(ids) - 1
        torch.testing.assert_close(out.pooled[i], out.tokens[i, eos], atol=1e-6, rtol=0)
    _check_padding_invariance(enc, caps)
    with pytest.raises(ValueError, match="positions"):
        CLIPTextEncoder(tiny_clip_dir, max_length=100)


def test_text_features_cat_and_select():
    a = TextFeatures(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(), torch.zeros(2, 4))
    b = TextFeatures(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 4))
    c = TextFeatures.cat([a, b])
    assert c.tokens.shape == (3, 5, 4) and c.mask.sum().item() == 3 + 5 and c.tokens[0, 3:].abs().sum() == 0
    s = c.index_select([1])
    assert s.tokens.shape == (1, 1, 4) and s.mask.all()
    with pytest.raises(ValueError, match="pooled"):
        TextFeatures(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 5))
