"""wan.model.ModelFile: one header-only description of a single-file model, shared by the loader and the planner."""

import pytest

from ipa_train.fileio import atomic_save_safetensors, load_safetensors
from ipa_train.memory.plan import PlanError, describe_model
from ipa_train.wan.frozen_linear import FrozenLinear
from ipa_train.wan.model import ModelFile, ModelLoadError, load_transformer, save_original_wan_single_file
from support.comfy_tiny import build_tiny_comfy_transformer


def split_vace_files(full_path, folder):
    """(t2v base, VACE module) files made from a complete Wan2.1-VACE file."""
    tensors = {k.removeprefix("model.diffusion_model."): v for k, v in load_safetensors(full_path)[0].items()}
    module = {k: v for k, v in tensors.items() if k.startswith(("vace_blocks.", "vace_patch_embedding."))}
    base = {k: v for k, v in tensors.items() if k not in module}
    return (atomic_save_safetensors(folder / "Wan2_1-T2V-tiny.safetensors", base),
            atomic_save_safetensors(folder / "Wan2_1-VACE_module_tiny.safetensors", module))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_file")
    model = build_tiny_comfy_transformer(seed=3)
    path = save_original_wan_single_file(model, folder / "wan2.1_vace_tiny.safetensors", record_config=False)
    base, module = split_vace_files(path, folder)
    return folder, model, path, base, module


def test_a_base_and_its_module_are_described_as_the_complete_model(files):
    _, model, path, base, module = files
    whole, pair = ModelFile.describe(path), ModelFile.describe(base, module)
    assert whole.config == pair.config and whole.shapes == pair.shapes
    assert pair.name == f"{base.name} + {module.name}" and [s.path for s in pair.sources] == [base, module]
    assert whole.fp8_linears() == {}
    spec = describe_model(str(base), str(module))
    assert spec.name == pair.name and spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec.config["vace_layers"] == pair.config["vace_layers"] and spec.config["num_layers"] == pair.config["num_layers"]
    loaded = load_transformer(base, vace_module=module)
    assert dict(loaded.config)["num_layers"] == pair.config["num_layers"] and list(loaded.config.vace_layers) == pair.config["vace_layers"]


def test_the_planner_refuses_what_the_loader_refuses_with_the_same_words(files):
    _, _, path, base, module = files
    for args in ((module, None), (base, None), (path, module)):
        with pytest.raises(ModelLoadError) as loading:
            load_transformer(args[0], vace_module=args[1])
        with pytest.raises(PlanError) as planning:
            describe_model(str(args[0]), None if args[1] is None else str(args[1]))
        assert str(planning.value) == str(loading.value)


def test_fp8_linears_name_the_diffusers_layers_stored_fp8(files, tmp_path):
    _, model, _, _, _ = files
    loaded = load_transformer(files[2], base_precision="fp8")
    quantised = {name for name, m in loaded.named_modules() if isinstance(m, FrozenLinear)}
    assert quantised, "fp8 mode quantises the block linears"
    path = save_original_wan_single_file(loaded, tmp_path / "fp8.safetensors", record_config=False)
    stored = ModelFile.describe(path).fp8_linears()
    assert set(stored) == quantised and set(stored.values()) <= {"tensor", "none"}
    assert describe_model(str(path)).fp8_stored == stored
