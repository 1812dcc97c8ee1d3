"""IPA Mark Preferred's checks and canvas text (needs COMFYUI_PATH): the dataset name is refused when the prompt is
queued (validate_inputs), and the summary under the node says what was stored, what was already there, what next."""

from __future__ import annotations

from conftest import requires_comfyui

pytestmark = requires_comfyui


def test_dataset_name_is_checked_at_queue_time():
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    from comfyui_ipa_pack.nodes.collector import IPAMarkPreferred

    assert IPAMarkPreferred.validate_inputs(dataset="hands_v2") is True
    for bad in ("../up", "a/b", "", ".hidden", "/abs"):
        assert "invalid dataset name" in IPAMarkPreferred.validate_inputs(dataset=bad), bad


def test_canvas_summary_names_new_and_repeated_seeds():
    from support.comfy_tiny import load_pack_cpu

    load_pack_cpu()
    from types import SimpleNamespace

    from comfyui_ipa_pack.ipa_train.data.collect import CollectResult
    from comfyui_ipa_pack.ipa_train.data.samples import AddResult
    from comfyui_ipa_pack.nodes.collector import canvas_summary

    chosen = [SimpleNamespace(seed=seed) for seed in (4, 5, 6, 7)]
    results = [AddResult(f"{i:016x}", added=i >= 2, status="pending") for i in range(4)]
    text = canvas_summary(CollectResult("hands", results, {"pending": 10, "preferred": 3, "rejected": 1}), chosen)
    assert text.splitlines()[0] == "Stored 2 new in 'hands' (seeds 6, 7)"
    assert "2 already in the dataset (identical; seeds 4, 5)" in text and "steps by the candidate count" in text
    assert "10 pending, 3 preferred, 1 rejected" in text and "IPA gallery" in text
    fresh = canvas_summary(CollectResult("hands", results[2:], {"pending": 0, "preferred": 2, "rejected": 0}), chosen[2:])
    assert "already" not in fresh and "gallery" not in fresh
