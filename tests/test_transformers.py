"""Hugging Face models: tiny GPT-2 and BERT built from configs (no download), sparsified with EOI.

GPT-2 keeps its projections in ``transformers.pytorch_utils.Conv1D`` (weight stored ``(in, out)``)
and ties ``lm_head`` to the token embedding ``wte``; BERT ties its MLM decoder to the word
embedding (docs/design.md §4, coverage and tied parameters).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from orthosparse import density_report, get_masks, sparsify
from orthosparse._layers import prunable_layers

try:  # any failure of the optional import skips, not only ImportError
    import transformers
    from transformers.pytorch_utils import Conv1D
except Exception as err:  # noqa: BLE001
    pytest.skip(f"needs transformers (the test extra): {err}", allow_module_level=True)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        torch.manual_seed(0)
        return build()


def tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
    return quiet(lambda: transformers.GPT2LMHeadModel(config))


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    return quiet(lambda: transformers.BertForMaskedLM(config))


def train_lm(model: nn.Module, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        ids = torch.randint(0, 100, (4, 16), generator=gen(step))
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def leaked(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    params = dict(model.named_parameters())
    return sum(int(torch.count_nonzero(params[n].detach()[~m])) for n, m in masks.items())


def test_gpt2_conv1d_layers_are_masked_with_exact_orthogonality_and_wte_stays_dense():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    wte = model.transformer.wte.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"'transformer\.wte\.weight' is tied to "
                                         r"'lm_head\.weight'.*left dense"):
        masks = sparsify(model, 0.2, mask="erk", init="eoi", generator=gen())
    conv1d = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert sorted(masks) == sorted(f"{n}.weight" for n in conv1d) and len(conv1d) == 8
    assert torch.equal(model.transformer.wte.weight, wte)  # never zeroed nor re-initialized
    for name in conv1d:
        w = model.get_submodule(name).weight.detach()  # (in, out): the layer computes x @ w
        d_in, d_out = w.shape
        # The map x -> x @ w is an isometry when it widens (w w^T = I) and its transpose is when
        # it narrows (w^T w = I): EOI's exact orthogonality on the layer's own (out, in) matrix.
        gram = w @ w.T if d_in <= d_out else w.T @ w
        torch.testing.assert_close(gram, torch.eye(min(d_in, d_out)), atol=1e-5, rtol=0)
    rows = {r.name: r for r in density_report(model).rows}
    assert rows["transformer.wte.weight"].status == "tied"
    assert rows["transformer.h.0.mlp.c_fc.weight"].status == "masked"
    train_lm(model)
    assert leaked(model, masks) == 0
    assert get_masks(model).keys() == masks.keys()


def test_conv1d_is_initialized_as_the_transposed_linear():
    # The same layer stored (in, out) and (out, in) gets the same weights from the same seed:
    # init schemes see Conv1D through its (out, in) view, so fan-in and fan-out are the layer's.
    def pair() -> tuple[nn.Module, nn.Module]:
        return (nn.Sequential(Conv1D(48, 16), nn.Tanh(), Conv1D(8, 48)),
                nn.Sequential(nn.Linear(16, 48), nn.Tanh(), nn.Linear(48, 8)))

    layers = prunable_layers(pair()[0])
    assert [(layer.transposed, tuple(layer.oriented().weight.shape)) for layer in layers] == [
        (True, (48, 16)), (True, (8, 48))]
    # EOI draws no mask position; "dense" masks make the other schemes comparable too.
    for init, mask, density in (("eoi", "erk", 0.3), ("sparse-kaiming", "dense", 1.0),
                                ("kaiming", "dense", 1.0)):
        conv, linear = pair()
        a = sparsify(conv, density, mask=mask, init=init, generator=gen(1))
        b = sparsify(linear, density, mask=mask, init=init, generator=gen(1))
        for (name_a, mask_a), (name_b, mask_b) in zip(a.items(), b.items(), strict=True):
            assert torch.equal(mask_a, mask_b.T), (init, name_a, name_b)
        for layer_a, layer_b in ((conv[0], linear[0]), (conv[2], linear[2])):
            torch.testing.assert_close(layer_a.weight.detach(), layer_b.weight.detach().T,
                                       atol=0, rtol=0, msg=init)


def test_bert_masks_hold_and_the_tied_decoder_stays_dense():
    model = tiny_bert()
    embedding = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is embedding
    before = embedding.detach().clone()
    with pytest.warns(UserWarning, match=r"word_embeddings\.weight' is tied to "
                                         r"'cls\.predictions\.decoder\.weight'.*left dense"):
        masks = sparsify(model, 0.2, generator=gen())
    assert len(masks) == 13 and "cls.predictions.decoder.weight" not in masks
    assert torch.equal(embedding.detach(), before)
    train_lm(model)
    assert leaked(model, masks) == 0
