"""m̄ follows in-place ``.data`` edits of the embedding table (issue 23 item 12): the logits after an edit
equal those of a model loaded with the edited table."""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerForCausalLM


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w.data.mul_(3.0),  # the whole table
        lambda w: w.data[5].mul_(40.0),  # one row
        lambda w: w.data.__setitem__(slice(0, 3), torch.ones_like(w.data[:3])),  # a few rows
    ],
    ids=["scale_table", "scale_row", "assign_rows"],
)
def test_logits_follow_an_in_place_data_edit(tiny_model_dir, tmp_path, edit):
    model = FlyThinkerForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 7, 1, 2, 9, 11, 0, 4]])
    with torch.no_grad():
        model(input_ids=ids)  # m̄ computed and cached
        edit(model.generator.get_input_embeddings().weight)
        got = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "edited")
    reference = FlyThinkerForCausalLM.from_pretrained(tmp_path / "edited").eval()  # m̄ from the edited table
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    assert (got - expected).abs().max().item() <= 1e-5
