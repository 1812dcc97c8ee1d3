"""IPA LoRA Loader inside a real ComfyUI (COMFYUI_PATH) on the tiny Wan2.1-VACE file: every key layout, exact
matched counts, applied weights equal W + strength * scale * B @ A, errors and metadata warnings.

The layout conversion is trainer-core's ``ipa_train.wan.lora_keys.to_comfy_native``; until that branch is merged the
layouts ComfyUI reads natively are tested through an identity stand-in and the others are skipped."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import requires_comfyui

pytestmark = requires_comfyui

RANK, DIM = 4, 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from support.comfy_tiny import TinyComfy, load_pack_cpu

    load_pack_cpu()
    host = TinyComfy(tmp_path_factory.mktemp("lora"))
    host.model = host.load_model()
    return host


def _ab(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, DIM, generator=generator) * 0.1, torch.randn(DIM, RANK, generator=generator) * 0.1


def _layout(name, alpha):
    """Keys for two modules, main block 0 self-attn q and VACE block 0 self-attn k, in layout ``name``."""
    (a_q, b_q), (a_k, b_k) = _ab(1), _ab(2)
    modules = {
        "native": ("diffusion_model.blocks.0.self_attn.q", "diffusion_model.vace_blocks.0.self_attn.k", "lora_A", "lora_B"),
        "native_down_up": ("diffusion_model.blocks.0.self_attn.q", "diffusion_model.vace_blocks.0.self_attn.k", "lora_down", "lora_up"),
        "kohya": ("lora_unet_blocks_0_self_attn_q", "lora_unet_vace_blocks_0_self_attn_k", "lora_down", "lora_up"),
        "diffusers": ("transformer.blocks.0.attn1.to_q", "transformer.vace_blocks.0.attn1.to_k", "lora_A", "lora_B"),
        "diffsynth": ("blocks.0.self_attn.q", "vace_blocks.0.self_attn.k", "lora_A.default", "lora_B.default"),
        "peft": ("base_model.model.blocks.0.self_attn.q", "base_model.model.vace_blocks.0.self_attn.k", "lora_A", "lora_B"),
    }[name]
    q, k, down, up = modules
    state = {f"{q}.{down}.weight": a_q, f"{q}.{up}.weight": b_q, f"{k}.{down}.weight": a_k, f"{k}.{up}.weight": b_k}
    if alpha is not None:
        state[f"{q}.alpha"] = torch.tensor(float(alpha))
        state[f"{k}.alpha"] = torch.tensor(float(alpha))
    return state, {"blocks.0.self_attn.q.weight": (a_q, b_q), "vace_blocks.0.self_attn.k.weight": (a_k, b_k)}


def _write(tiny, name, state, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tiny.loras / name), metadata=metadata or {})
    import folder_paths

    folder_paths.filename_list_cache.clear()
    return name


NATIVE_LAYOUTS = ["native", "native_down_up", "kohya"]
CONVERTED_LAYOUTS = ["diffusers", "diffsynth", "peft"]


# every layout with and without alpha keys, except diffusers with alpha: diffusers keeps alpha in metadata, not as keys
LAYOUT_ALPHAS = [(layout, alpha) for layout in NATIVE_LAYOUTS + CONVERTED_LAYOUTS for alpha in (None, 2.0) if not (layout == "diffusers" and alpha)]


@pytest.mark.parametrize("layout, alpha", LAYOUT_ALPHAS)
def test_every_layout_applies_exactly(tiny, layout, alpha):
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, expected = _layout(layout, alpha)
    name = _write(tiny, f"{layout}_{alpha}.safetensors", state)
    strength = 0.8
    patched, report = IPALoRALoader.execute(tiny.model, name, strength).args[:2]
    assert "2 weights patched, 0 keys unmatched" in report
    scale = (alpha / RANK) if alpha is not None else 1.0
    base = {k: v.clone() for k, v in tiny.model.model.diffusion_model.state_dict().items()}
    patched.patch_model()
    try:
        weights = patched.model.diffusion_model.state_dict()
        for key, (a, b) in expected.items():
            assert torch.allclose(weights[key], base[key] + strength * scale * (b @ a), atol=1e-6), key
        untouched = "blocks.1.self_attn.q.weight"
        assert torch.equal(weights[untouched], base[untouched])
    finally:
        patched.unpatch_model()
    assert torch.equal(tiny.model.model.diffusion_model.state_dict()["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])
    assert patched.model_options["ipa_loras"][0]["name"] == name


def test_unmatched_keys_are_reported_and_nothing_matching_is_an_error(tiny):
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, _ = _layout("native", 4.0)
    state["diffusion_model.blocks.9.self_attn.q.lora_A.weight"] = torch.zeros(RANK, DIM)
    state["diffusion_model.blocks.9.self_attn.q.lora_B.weight"] = torch.zeros(DIM, RANK)
    name = _write(tiny, "partial.safetensors", state, {"ipa.objective": "ipa", "ipa.beta": "600", "ipa.steps": "1000", "ipa.base_model": "wan2.1_vace_1.3B_fp16.safetensors"})
    _, report = IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    assert "2 weights patched, 2 keys unmatched" in report and "blocks.9.self_attn.q.lora_A.weight" in report
    assert "objective: ipa\nbeta: 600\nsteps: 1000" in report
    nothing = _write(tiny, "nothing.safetensors", {"diffusion_model.blocks.9.self_attn.q.lora_A.weight": torch.zeros(RANK, DIM),
                                                   "diffusion_model.blocks.9.self_attn.q.lora_B.weight": torch.zeros(DIM, RANK)})
    with pytest.raises(ValueError, match="no key of nothing.safetensors matches this model"):
        IPALoRALoader.execute(tiny.model, nothing, 1.0)


def test_metadata_of_another_base_model_warns(tiny, monkeypatch):
    from comfyui_ipa_pack.nodes import lora_loader

    state, _ = _layout("native", None)
    monkeypatch.setattr(lora_loader, "model_width", lambda model: 1536)  # pretend the tiny model is the 1.3B
    for key in ("ipa.base_model", "base_model"):  # the trainer's header, and other tools' bare key
        name = _write(tiny, f"other_base_{key}.safetensors", state, {key: "wan2.1_vace_14B_fp16.safetensors"})
        _, report = lora_loader.IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
        assert "WARNING: this LoRA was trained on wan2.1_vace_14B_fp16.safetensors (14B) but the model is Wan2.1 1.3B" in report


def test_report_lists_only_what_is_set_and_says_whether_the_base_model_matches(tiny, monkeypatch):
    """The report printed empty ``init_lora:`` and ``vace_module:`` lines and raw hashes, and never said that the base
    model matches."""
    from comfyui_ipa_pack.nodes import lora_loader

    state, _ = _layout("native", None)
    monkeypatch.setattr(lora_loader, "model_width", lambda model: 1536)  # pretend the tiny model is the 1.3B
    header = {"ipa.objective": "ipa", "ipa.steps": "1000", "ipa.init_lora": "", "ipa.vace_module": "",
              "ipa.base_model": "/models/diffusion_models/wan2.1_vace_1.3B_fp16.safetensors",
              "ipa.base_model_hash": "file-sha256:" + "ab" * 32, "ipa.dataset_hash": "cd" * 32}
    name = _write(tiny, "report_same_base.safetensors", state, header)
    _, report = lora_loader.IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    lines = report.splitlines()
    assert "base model: matches (trained on wan2.1_vace_1.3B_fp16.safetensors, Wan2.1 1.3B; this model is Wan2.1 1.3B)" in lines
    assert "objective: ipa" in lines and "steps: 1000" in lines
    assert not [line for line in lines if line.rstrip().endswith(":") and line.strip() != "training settings:"], report
    assert "init_lora" not in report and "vace_module" not in report and "hash" not in report and "abab" not in report
    name = _write(tiny, "report_other_base.safetensors", state, {**header, "ipa.base_model": "wan2.1_vace_14B_fp16.safetensors"})
    _, report = lora_loader.IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    assert "base model: does NOT match (trained on wan2.1_vace_14B_fp16.safetensors, Wan2.1 14B; this model is Wan2.1 1.3B)" in report
    name = _write(tiny, "report_no_metadata.safetensors", state)
    _, report = lora_loader.IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    assert "base model: not recorded in the LoRA, so it cannot be checked" in report and "training settings: none recorded" in report


@pytest.mark.parametrize("damage, looks_like", [("truncated", "is truncated"), ("pickle", "is a PyTorch pickle archive")])
def test_unreadable_lora_files_are_named(tiny, damage, looks_like):
    """A truncated file or a torch pickle under a .safetensors name gave safetensors' bare "invalid header length"."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, _ = _layout("native", 4.0)
    name = _write(tiny, f"{damage}.safetensors", state)
    path = tiny.loras / name
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save(state, path)
    with pytest.raises(ValueError, match=rf"LoRA {path} {looks_like}.*download or export it again"):
        IPALoRALoader.execute(tiny.model, name, 1.0)


def test_a_lora_of_another_family_says_what_to_check(tiny):
    """An SDXL LoRA: the node's error names the family its keys suggest, the file's origin and the layouts read."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    name = _write(tiny, "sdxl_style.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(RANK, DIM)})
    with pytest.raises(ValueError) as info:
        IPALoRALoader.execute(tiny.model, name, 1.0)
    message = str(info.value)
    assert message.startswith("sdxl_style.safetensors: no key is a Wan2.1 LoRA weight") and "Stable Diffusion / SDXL" in message
    assert "where the file came from" in message and "ComfyUI native (diffusion_model.blocks.0.self_attn.q.lora_A.weight" in message


def test_a_lora_for_another_model_is_an_error_not_a_silent_no_op(tiny, caplog):
    """Right names, wrong shapes (a LoRA made for a width-24 model): ComfyUI would accept the patches and only log
    "shape ... is invalid" when loading. The loader finds it first, with ComfyUI's own patching code."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    other = {f"diffusion_model.blocks.{b}.self_attn.{m}.lora_{ab}.weight": torch.ones(shape)
             for b in (0, 1) for m in "qkv" for ab, shape in (("A", (RANK, 24)), ("B", (24, RANK)))}
    name = _write(tiny, "for_another_model.safetensors", other, {"ipa.base_model": "tiny_other_vace.safetensors"})
    with caplog.at_level(logging.INFO):
        with pytest.raises(ValueError) as info:
            IPALoRALoader.execute(tiny.model, name, 1.0)
    message = str(info.value)
    assert "none of the 6 weights of for_another_model.safetensors fit this model" in message
    assert "is invalid for input of size 576" in message  # ComfyUI's own words for the first one
    assert "made for a Wan model of width 24; this model's width is 128" in message and "'tiny_other_vace.safetensors'" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # the dry run logged nothing itself

    # half fits: the fitting weights apply, the others are left out and reported, and loading logs no ComfyUI error
    state, expected = _layout("native", None)
    state.update({key: value for key, value in other.items() if ".blocks.1." in key})
    name = _write(tiny, "half_fits.safetensors", state)
    patched, report = IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    assert "2 weights patched, 0 keys unmatched, 3 weights left out (their shapes do not fit this model)" in report
    assert "WARNING: 3 weights of half_fits.safetensors do not fit this model" in report
    base = {k: v.clone() for k, v in tiny.model.model.diffusion_model.state_dict().items()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        patched.patch_model()
    try:
        weights = patched.model.diffusion_model.state_dict()
        a, b = expected["blocks.0.self_attn.q.weight"]
        assert torch.allclose(weights["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"] + b @ a, atol=1e-6)
        assert torch.equal(weights["blocks.1.self_attn.q.weight"], base["blocks.1.self_attn.q.weight"])
    finally:
        patched.unpatch_model()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "lora" in r.getMessage().lower()]


def test_loader_reruns_when_the_file_under_its_name_changes(tiny):
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, _ = _layout("native", None)
    name = _write(tiny, "retrained.safetensors", state)
    before = IPALoRALoader.fingerprint_inputs(lora_name=name, strength=1.0)
    assert IPALoRALoader.fingerprint_inputs(lora_name=name, strength=1.0) == before
    state = {key: value * 2 for key, value in state.items()}
    _write(tiny, name, state)
    import os

    os.utime(tiny.loras / name, ns=(1, 1))
    assert IPALoRALoader.fingerprint_inputs(lora_name=name, strength=1.0) != before


def _mapped(path) -> bool:
    """Whether this process has ``path`` memory-mapped (Linux: /proc/self/maps), what keeps it locked on Windows."""
    import os

    with open("/proc/self/maps") as maps:
        return os.path.realpath(path) in maps.read()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_the_loaded_lora_file_is_not_kept_mapped(tiny):
    """A patched model in ComfyUI's output cache must not hold the file mapped: Windows could not replace it when
    the LoRA is retrained under the same name."""
    import gc

    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, _ = _layout("native", None)
    name = _write(tiny, "mapped.safetensors", state)
    patched, _ = IPALoRALoader.execute(tiny.model, name, 1.0).args[:2]
    gc.collect()
    assert patched.patches and not _mapped(tiny.loras / name)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_comfyuis_cached_lora_is_released_before_the_file_is_replaced(tiny):
    """ComfyUI's LoraLoader keeps the last file in ``loaded_lora`` (memory-mapped); the train node clears the entry
    that holds the file it replaces, and only that one."""
    import gc

    import folder_paths
    from comfyui_ipa_pack.nodes.lora_cache import release_cached_lora

    comfy_nodes = __import__("sys").modules["nodes"]  # ComfyUI's nodes.py, as load_pack_cpu imported it
    state, _ = _layout("native", None)
    name, other = _write(tiny, "cached.safetensors", state), _write(tiny, "other_cached.safetensors", state)
    loader, only_model, keeper = comfy_nodes.LoraLoader(), comfy_nodes.LoraLoaderModelOnly(), comfy_nodes.LoraLoaderModelOnly()
    loader.load_lora(tiny.model, None, name, 1.0, 0.0)
    only_model.load_lora_model_only(tiny.model, name, 1.0)
    keeper.load_lora_model_only(tiny.model, other, 1.0)
    assert loader.loaded_lora[0] == folder_paths.get_full_path("loras", name) and _mapped(tiny.loras / name)
    assert release_cached_lora(tiny.loras / name) == 2
    gc.collect()
    assert loader.loaded_lora is None and only_model.loaded_lora is None and not _mapped(tiny.loras / name)
    assert keeper.loaded_lora is not None and _mapped(tiny.loras / other)  # another file's cache stays
    assert release_cached_lora(tiny.loras / name) == 0


def test_lora_names_resolve_inside_the_loras_folders(tiny, tmp_path):
    """A widget value from a request: '..', an absolute path or a link leading out of models/loras is refused with
    what to do; a link to a file inside the folder still works."""
    import os

    import folder_paths
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, _ = _layout("native", None)
    outside = tmp_path / "outside.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(outside))
    for bad in ("../outside.safetensors", "ipa/../../outside.safetensors", str(outside), "..\\outside.safetensors"):
        with pytest.raises(ValueError, match="is not a file name in ComfyUI's loras folder: pick one from the list"):
            IPALoRALoader.execute(tiny.model, bad, 1.0)
    os.symlink(outside, tiny.loras / "escape.safetensors")
    folder_paths.filename_list_cache.clear()
    with pytest.raises(ValueError, match="resolves to .*outside.safetensors, outside ComfyUI's loras folders .*extra_model_paths.yaml"):
        IPALoRALoader.execute(tiny.model, "escape.safetensors", 1.0)
    # a link to a file inside the folder is fine
    os.symlink(tiny.loras / _write(tiny, "inside.safetensors", state), tiny.loras / "alias.safetensors")
    assert "2 weights patched" in IPALoRALoader.execute(tiny.model, "alias.safetensors", 1.0).args[1]


# ---------------------------------------------------------------------------------------------------------------
# Two experts (Wan2.2-VACE-Fun A14B): model = high-noise expert, model_low_noise = low-noise expert

@pytest.fixture(scope="module")
def low_model(tiny):
    """A second tiny VACE model (other weights) standing for the low-noise expert."""
    import nodes
    from support.comfy_tiny import write_tiny_vace

    name = "tiny_wan22_vace_low_noise.safetensors"
    write_tiny_vace(tiny.diffusion_models / name, seed=7)
    return nodes.UNETLoader().load_unet(name, "default")[0]


def _q_lora(seed, expert=None):
    """A LoRA on main block 0 self-attn q only; ``expert`` written as ipa.expert like the trainer does."""
    a, b = _ab(seed)
    state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": a, "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b}
    return state, (b @ a), ({"ipa.expert": expert, "ipa.objective": "ipa"} if expert else {})


def _q_weight(model, patched=True):
    """blocks.0.self_attn.q.weight of a ModelPatcher, with its patches applied (or as loaded)."""
    if not patched:
        return model.model.diffusion_model.state_dict()["blocks.0.self_attn.q.weight"].clone()
    model.patch_model()
    try:
        return model.model.diffusion_model.state_dict()["blocks.0.self_attn.q.weight"].clone()
    finally:
        model.unpatch_model()


def _write_pair(tiny, stem, high_expert="high", low_expert="low"):
    high_state, high_delta, high_meta = _q_lora(11, high_expert)
    low_state, low_delta, low_meta = _q_lora(12, low_expert)
    (tiny.loras / "ipa").mkdir(exist_ok=True)
    _write(tiny, f"ipa/{stem}_high.safetensors", high_state, high_meta)
    _write(tiny, f"ipa/{stem}_low.safetensors", low_state, low_meta)
    return high_delta, low_delta


@pytest.mark.parametrize("picked", ["high", "low"])
def test_a_pair_goes_each_file_to_its_own_expert(tiny, low_model, picked):
    """Either file of <name>_high / <name>_low picked: each is applied to its own expert, exactly, and the report says
    what went where."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    high_delta, low_delta = _write_pair(tiny, "pair")
    high_base, low_base = _q_weight(tiny.model, False), _q_weight(low_model, False)
    high, report, low = IPALoRALoader.execute(tiny.model, f"ipa/pair_{picked}.safetensors", 0.5, model_low_noise=low_model).args
    assert torch.allclose(_q_weight(high), high_base + 0.5 * high_delta, atol=1e-6)
    assert torch.allclose(_q_weight(low), low_base + 0.5 * low_delta, atol=1e-6)
    first = report.splitlines()[0]
    assert "ipa/pair_high.safetensors -> model (high-noise expert) (ipa.expert in its metadata)" in first
    assert "ipa/pair_low.safetensors -> model_low_noise (low-noise expert) (ipa.expert in its metadata)" in first
    assert report.count("1 weights patched, 0 keys unmatched") == 2
    assert [entry["expert"] for entry in high.model_options["ipa_loras"]] == ["high"]
    assert [entry["expert"] for entry in low.model_options["ipa_loras"]] == ["low"]
    assert torch.equal(_q_weight(tiny.model), high_base) and torch.equal(_q_weight(low_model), low_base)  # inputs untouched


def test_one_experts_lora_leaves_the_other_expert_unchanged(tiny, low_model):
    """The trainer's default (expert low) writes only <name>_low: the high-noise expert passes through as it came."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    state, delta, meta = _q_lora(13, "low")
    (tiny.loras / "ipa").mkdir(exist_ok=True)
    name = _write(tiny, "ipa/only_low.safetensors", state, meta)  # no _low suffix: routed by its metadata alone
    high, report, low = IPALoRALoader.execute(tiny.model, name, 1.0, model_low_noise=low_model).args
    assert high is tiny.model and torch.allclose(_q_weight(low), _q_weight(low_model, False) + delta, atol=1e-6)
    assert "model (high-noise expert): no LoRA for the high-noise expert, returned unchanged" in report
    assert "ipa/only_low.safetensors -> model_low_noise (low-noise expert) (ipa.expert in its metadata)" in report


def test_names_alone_route_a_pair_without_metadata(tiny, low_model):
    """LoRAs from other tools (Comfy-Org style *_high_noise / *_low_noise, no ipa.expert) go by their names, and the
    report says so; a LoRA naming no expert goes to both."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    high_state, high_delta, _ = _q_lora(14)
    low_state, low_delta, _ = _q_lora(15)
    _write(tiny, "wan22_hands_high_noise.safetensors", high_state)
    _write(tiny, "wan22_hands_low_noise.safetensors", low_state)
    high, report, low = IPALoRALoader.execute(tiny.model, "wan22_hands_low_noise.safetensors", 1.0, model_low_noise=low_model).args
    assert torch.allclose(_q_weight(high), _q_weight(tiny.model, False) + high_delta, atol=1e-6)
    assert torch.allclose(_q_weight(low), _q_weight(low_model, False) + low_delta, atol=1e-6)
    assert "wan22_hands_high_noise.safetensors -> model (high-noise expert) (from its name; no ipa.expert in its metadata)" in report
    state, delta, _ = _q_lora(16)
    name = _write(tiny, "style_for_both.safetensors", state)
    high, report, low = IPALoRALoader.execute(tiny.model, name, 1.0, model_low_noise=low_model).args
    assert torch.allclose(_q_weight(high), _q_weight(tiny.model, False) + delta, atol=1e-6)
    assert torch.allclose(_q_weight(low), _q_weight(low_model, False) + delta, atol=1e-6)
    assert "style_for_both.safetensors -> model (high-noise expert) and model_low_noise (low-noise expert)" in report


@pytest.mark.parametrize("picked", ["high", "low"])
def test_a_pair_the_wrong_way_round_is_caught_from_the_metadata(tiny, low_model, picked):
    """<name>_high holding the low-noise LoRA (files swapped or renamed): an error naming the fix, whichever file is
    picked, and with one model connected too."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    _write_pair(tiny, "swapped", high_expert="low", low_expert="high")
    with pytest.raises(ValueError) as info:
        IPALoRALoader.execute(tiny.model, f"ipa/swapped_{picked}.safetensors", 1.0, model_low_noise=low_model)
    message = str(info.value)
    assert "is named for the" in message and "but its metadata (ipa.expert = " in message and "swapped or renamed" in message
    assert "Rename it to swapped_low.safetensors" in message or "Rename it to swapped_high.safetensors" in message
    with pytest.raises(ValueError, match=r"ipa/swapped_high.safetensors is named for the high-noise expert, but its metadata "
                                         r"\(ipa.expert = low\).*Rename it to swapped_low.safetensors"):
        IPALoRALoader.execute(tiny.model, "ipa/swapped_high.safetensors", 1.0)


def test_one_model_connected_says_which_expert_the_lora_was_for(tiny):
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    _write_pair(tiny, "single")
    patched, report, low = IPALoRALoader.execute(tiny.model, "ipa/single_low.safetensors", 1.0).args
    assert low is None and "1 weights patched" in report
    assert ("trained for the low-noise expert of a two-expert model (ipa.expert in its metadata); applied to model, the "
            "only model connected: that must be the low-noise expert") in report.splitlines()[1]


def test_loader_reruns_when_the_pairs_partner_changes(tiny):
    import os

    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    _write_pair(tiny, "rerun")
    before = IPALoRALoader.fingerprint_inputs(lora_name="ipa/rerun_high.safetensors", strength=1.0)
    os.utime(tiny.loras / "ipa" / "rerun_low.safetensors", ns=(1, 1))
    assert IPALoRALoader.fingerprint_inputs(lora_name="ipa/rerun_high.safetensors", strength=1.0) != before


def test_experts_connected_the_other_way_round_are_caught_from_the_weights(tiny, low_model):
    """The LoRA's metadata names the file it was trained on (ipa.base_model); with that file in diffusion_models, the
    loader compares its weights fingerprint with each connected expert: swapped sockets are an error naming the fix,
    the right way round says so in the report."""
    from comfyui_ipa_pack.nodes.lora_loader import IPALoRALoader

    high_state, _, high_meta = _q_lora(21, "high")
    low_state, _, low_meta = _q_lora(22, "low")
    (tiny.loras / "ipa").mkdir(exist_ok=True)
    _write(tiny, "ipa/wired_high.safetensors", high_state, {**high_meta, "ipa.base_model": tiny.unet_name})
    _write(tiny, "ipa/wired_low.safetensors", low_state, {**low_meta, "ipa.base_model": "tiny_wan22_vace_low_noise.safetensors"})
    _, report, _ = IPALoRALoader.execute(tiny.model, "ipa/wired_low.safetensors", 1.0, model_low_noise=low_model).args
    assert f"expert check: model (high-noise expert) holds {tiny.unet_name}, the model ipa/wired_high.safetensors was trained on" in report
    assert "expert check: model_low_noise (low-noise expert) holds tiny_wan22_vace_low_noise.safetensors" in report
    with pytest.raises(ValueError, match=r"ipa/wired_(high|low).safetensors was trained on the (high|low)-noise expert .*"
                                         r"the experts are connected the other way round. Connect the high-noise expert"):
        IPALoRALoader.execute(low_model, "ipa/wired_low.safetensors", 1.0, model_low_noise=tiny.model)
    # a base file that is not there (trained elsewhere): nothing to compare, nothing said
    _write(tiny, "ipa/elsewhere_low.safetensors", low_state, {**low_meta, "ipa.base_model": "not_here.safetensors"})
    _, report, _ = IPALoRALoader.execute(tiny.model, "ipa/elsewhere_low.safetensors", 1.0, model_low_noise=low_model).args
    assert "expert check" not in report
