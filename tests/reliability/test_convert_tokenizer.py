"""`flythinker convert` takes the tokenizer from where it is and never writes one that cannot encode text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from flythinker import FlyThinkerForCausalLM
from flythinker.cli import main


@pytest.fixture()
def reference_checkpoint(workspace, tmp_path):
    """What the authors' trainer saves: Generator./Reasoner. state dict as pytorch_model.bin + the generator's
    config.json, no tokenizer files; and the reasoner's base directory (config + tokenizer)."""
    root = workspace["root"]
    model = FlyThinkerForCausalLM.from_components(
        generator=str(root / "generator"), reasoner=str(root / "reasoner")
    )
    state = {f"Generator.{k}": v.clone() for k, v in model.generator.state_dict().items()}
    state.update({f"Reasoner.model.{k}": v.clone() for k, v in model.reasoner.state_dict().items()})
    checkpoint = tmp_path / "reference"
    checkpoint.mkdir()
    torch.save(state, checkpoint / "pytorch_model.bin")
    AutoConfig.from_pretrained(root / "generator").save_pretrained(checkpoint)
    base = tmp_path / "reasoner_base"
    AutoConfig.from_pretrained(root / "reasoner").save_pretrained(base)
    workspace["tokenizer"].save_pretrained(base)
    return model, checkpoint, base


def _logits_and_loss(model, tokenizer):
    ids = torch.tensor([tokenizer("Hello world, this is a PEP.")["input_ids"]])
    with torch.no_grad():
        out = model(ids, labels=ids, return_logits=True)
    return out.logits, out.loss


def test_convert_takes_the_tokenizer_from_the_base_directory(
    reference_checkpoint, workspace, tmp_path, capsys
):
    model, checkpoint, base = reference_checkpoint
    out = tmp_path / "out"
    assert (
        main(
            ["convert", "--checkpoint", str(checkpoint), "--output", str(out), "--reasoner-config", str(base)]
        )
        == 0
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = workspace["tokenizer"]("Hello world")["input_ids"]
    assert tokenizer("Hello world")["input_ids"] == expected and len(expected) > 0
    converted = FlyThinkerForCausalLM.from_pretrained(out).eval()
    (a, loss_a), (b, loss_b) = (
        _logits_and_loss(converted, tokenizer),
        _logits_and_loss(model.eval(), tokenizer),
    )
    assert (a - b).abs().max().item() <= 1e-5 and loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)


def test_convert_never_writes_a_tokenizer_that_cannot_encode_text(reference_checkpoint, tmp_path):
    _, checkpoint, base = reference_checkpoint
    bare = tmp_path / "reasoner_config_only"
    AutoConfig.from_pretrained(base).save_pretrained(bare)
    out = tmp_path / "out"
    assert (
        main(
            ["convert", "--checkpoint", str(checkpoint), "--output", str(out), "--reasoner-config", str(bare)]
        )
        == 0
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(out)
    except (OSError, ValueError):
        return  # no tokenizer written: fine
    assert tokenizer("Hello world")["input_ids"], "a tokenizer that encodes 'Hello world' as [] was written"


def test_an_explicit_tokenizer_that_cannot_encode_text_is_refused(reference_checkpoint, tmp_path, capsys):
    _, checkpoint, _ = reference_checkpoint
    out = tmp_path / "out"
    code = main(
        ["convert", "--checkpoint", str(checkpoint), "--output", str(out), "--tokenizer", str(checkpoint)]
    )
    assert code == 2
    assert "cannot encode text" in capsys.readouterr().err
    assert not out.exists()


def test_convert_refuses_a_non_finite_lambda_through_the_config(reference_checkpoint, tmp_path):
    from flythinker import convert_reference_checkpoint

    _, checkpoint, base = reference_checkpoint
    with pytest.raises((ValueError, TypeError)):
        convert_reference_checkpoint(
            checkpoint, tmp_path / "out", reasoner_config=base, fusion_lambda=float("nan")
        )
    assert not (tmp_path / "out").exists()
