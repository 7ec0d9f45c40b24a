"""The deploy layer's data flow: resolve once, check outputs first, one record, runners that guard their input."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fastervit import create_model
from fastervit_deploy.artifact import open_artifact
from fastervit_deploy.errors import FvdeployError, MissingDependency
from fastervit_deploy.model_spec import ModelDescription, resolve_model
from fastervit_deploy.options import ModelRequest, OutputTarget, Provider, RunOptions
from fastervit_deploy.plan import plan_export
from fastervit_deploy.record import embedded_record, read_record, sidecar_path
from fastervit_deploy.runners import OnnxRuntimeRunner

from .conftest import ROOT
from .helpers import assert_one_line_error, cli, export_tiny, quiet_steps, tiny_checkpoint

PACKAGES = ("fastervit", "fastervit_deploy")


def module_imports() -> dict[str, set[str]]:
    """Every module of ours and the modules of ours it imports (at any depth in the file)."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            targets = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        root = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
                        mod = f"{root}.{node.module}" if node.module else root
                        targets |= {mod} | {f"{mod}.{a.name}" for a in node.names}
                    elif node.module and node.module.split(".")[0] in PACKAGES:
                        targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
            graph[name] = targets
    return {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}


def test_no_module_imports_one_that_imports_it_back():
    graph = module_imports()
    assert len(graph) > 30
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for module in graph:
        if not module.endswith("__init__") and module not in PACKAGES:
            visit(module, [module])
    packages = set(PACKAGES) | {"fastervit_deploy.cli"}
    cycles = [c for c in cycles if not set(c) & packages]  # a package's __init__ re-exporting its modules
    assert not cycles, cycles[:3]


def test_typer_stays_in_the_cli_layer():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "fastervit_deploy").rglob("*.py")
             if "import typer" in p.read_text() or "from typer" in p.read_text()]
    assert users and all(u.startswith("fastervit_deploy/cli/") for u in users), users


@pytest.mark.parametrize("args", [
    ["export-onnx", "--model", "faster_vit_0_224", "--checkpoint", "absent.pth", "-o", "x.txt"],
    ["quantize", "absent.onnx", "--int8", "-o", "x.plan"],
    ["build-trt", "--model", "faster_vit_0_224", "-o", "x.onnx"],
    ["coreml", "--model", "faster_vit_0_224", "-o", "x.onnx"],
    ["verify", "absent.onnx", "--json", "x.txt"],
    ["benchmark", "absent.onnx", "--plot", "x.jpg"],
])
def test_bad_output_suffix_is_refused_before_anything_heavy_loads(args, tmp_path):
    """No torch, no onnx, no checkpoint read: the refusal costs the interpreter's start-up only."""
    code = ("import sys; from fastervit_deploy.cli import run; code = run(sys.argv[1:]); "
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules); "
            "print('HEAVY', heavy); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "output must end in" in result.stderr and result.stderr.count("\n") == 1
    assert "HEAVY []" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_description_is_complete_and_round_trips(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar", "faster_vit_0_any_res", resolution=(160, 288))
    desc = resolve_model(ModelRequest("faster_vit_0_any_res", checkpoint=ckpt, resolution=(192, 320)))
    # the checkpoint's saved architecture is part of the description; the command line's size wins
    assert desc.config.dim == 32 and desc.config.num_classes == 10 and desc.resolution == (192, 320)
    assert desc.input.shape == (3, 192, 320) and desc.outputs[0].shape == (10,)
    assert desc.checkpoint.path.is_absolute() and len(desc.checkpoint.sha256) == 64
    assert ModelDescription.from_dict(json.loads(json.dumps(desc.to_dict()))) == desc
    with pytest.raises(Exception, match="cannot assign to field 'name'"):  # frozen
        desc.name = "other"
    # cli_args rebuild exactly this description
    again = resolve_model(ModelRequest(desc.cli_args()[1], checkpoint=ckpt, resolution=(192, 320),
                                       window_size=tuple(desc.config.window_size)))
    assert again == desc.replace(notes=again.notes)


def test_record_is_embedded_in_the_onnx_and_agrees_with_the_sidecar(tmp_path):
    path, record = export_tiny(tmp_path, verify=False)
    side = json.loads(sidecar_path(path).read_text())
    embedded = embedded_record(path)
    for key in ("format", "precision", "batch_range", "command"):
        assert side[key] == embedded.identity()[key]
    assert embedded.model == record.model and embedded.precision == "fp32"
    assert side["command"][:3] == ["export-onnx", "--model", "faster_vit_0_224"]


def test_moved_folder_finds_its_checkpoint_by_content_and_a_different_file_is_refused(tmp_path):
    src = tmp_path / "a"
    src.mkdir()
    ckpt = tiny_checkpoint(src / "ckpt.pth.tar")
    out = src / "m.onnx"
    assert cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "-o", out, "--no-verify").exit_code == 0
    moved = shutil.move(src, tmp_path / "b")  # the recorded absolute checkpoint path is gone now
    art = open_artifact(Path(moved) / "m.onnx")
    assert art.model.checkpoint.path == (Path(moved) / "ckpt.pth.tar").resolve()
    # a different file where the checkpoint should be: refused, naming it (no silent false comparison)
    tiny_checkpoint(Path(moved) / "ckpt.pth.tar", seed=1)
    assert_one_line_error(cli("verify", Path(moved) / "m.onnx"), r"ckpt.pth.tar is not the one m.onnx was made from")


def test_runners_refuse_use_before_activation_and_input_the_artifact_does_not_take(tmp_path):
    path, _ = export_tiny(tmp_path, verify=False)
    runner = OnnxRuntimeRunner(path, batch_range=(1, 4))
    good = np.zeros((2, 3, 224, 224), np.float32)
    with pytest.raises(FvdeployError, match="before activation"):
        runner.infer(good)
    with runner:
        assert runner.infer(good)["logits"].shape == (2, 10)
        with pytest.raises(FvdeployError, match=r"input takes \[N, 3, 224, 224\], got \[2, 3, 96, 96\]"):
            runner.infer(np.zeros((2, 3, 96, 96), np.float32))
        with pytest.raises(FvdeployError, match="must be a float32 array, got float64"):
            runner.infer(good.astype(np.float64))
        with pytest.raises(FvdeployError, match="batch 5 is outside the artifact's batch range 1..4"):
            runner.infer(np.zeros((5, 3, 224, 224), np.float32))
    with pytest.raises(FvdeployError, match="before activation"):
        runner.infer(good)


def test_verify_with_model_options_of_another_input_size_is_one_line(tmp_path):
    path, _ = export_tiny(tmp_path, verify=False)
    assert_one_line_error(cli("verify", path, "--model", "faster_vit_0_any_res", "--resolution", 160, 288),
                          r"model options give input \[N, 3, 160, 288\] but faster_vit_0_224.onnx takes \[N, 3, 224, 224\]")


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="checks the message where onnxruntime has no CUDA provider")
def test_provider_without_onnxruntime_gpu_is_one_line(tmp_path):
    path, _ = export_tiny(tmp_path, verify=False)
    assert_one_line_error(cli("verify", path, "--provider", "cuda"), r"--provider cuda needs CUDAExecutionProvider, "
                          r"which this onnxruntime does not have .*install onnxruntime-gpu", code=3)
    assert_one_line_error(cli("benchmark", path, "--provider", "tensorrt", "--batch", 1),
                          r"--provider tensorrt needs TensorrtExecutionProvider", code=3)
    with pytest.raises(MissingDependency):
        with open_artifact(path).runner(RunOptions(Provider.cuda)):
            pass


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs onnxruntime-gpu on a CUDA machine")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_verify_and_benchmark(tmp_path, provider):
    path, _ = export_tiny(tmp_path, verify=False)
    result = cli("verify", path, "--provider", provider, "--batch", 4)
    assert result.exit_code == 0, result.output
    result = cli("benchmark", path, "--provider", provider, "--batch", "1,4", "--iterations", 3, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    runners = {r["runner"] for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert f"onnxruntime-{provider}:{path.name}" in runners


def test_deploy_returns_a_folded_copy_and_leaves_the_model_alone():
    model = resolve_model(ModelRequest("faster_vit_0_224", overrides=dict(dim=32, in_dim=32, depths=[1, 1, 2, 1],
                                                                          num_heads=[1, 2, 2, 4]))).build()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        deployed = model.deploy()
        assert torch.equal(model(x), before) and not model.deployed  # unchanged: still a valid reference
        assert (deployed(x) - before).abs().max().item() < 1e-5
    kinds = lambda m: {type(s).__name__ for s in m.modules()}  # noqa: E731
    assert "BatchNorm2d" in kinds(model) and "BatchNorm2d" not in kinds(deployed)
    assert deployed.stem_conv is deployed.patch_embed.conv_down[0] and deployed.stem_conv.bias is not None
    assert model.stem_conv.bias is None  # the named stem conv: BN folded into the copy only


def test_checkpoint_like_weights_have_no_identity_blocks():
    model = create_model("faster_vit_3_224", dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
    zero_biases = sum(1 for n, p in model.named_parameters() if n.endswith("bias") and not p.any())
    assert zero_biases > 10  # training-style initialisation
    desc = resolve_model(ModelRequest("faster_vit_3_224", overrides=dict(dim=32, in_dim=32, depths=[1, 1, 2, 1],
                                                                         num_heads=[1, 2, 2, 4])))
    like = desc.build()
    assert not [n for n, p in like.named_parameters() if n.endswith("bias") and not p.any()]
    bns = [m for m in like.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.running_mean.any() and not torch.allclose(m.running_var, torch.ones_like(m.running_var))
                       for m in bns)
    gammas = [p for n, p in like.named_parameters() if n.rsplit(".", 1)[-1].startswith("gamma")]
    assert gammas and min(float(g.detach().min()) for g in gammas) >= 0.05  # layer scales, not 1e-5
    assert torch.equal(next(iter(desc.build().parameters())), next(iter(like.parameters())))  # seeded


def test_plan_reuses_nothing_it_did_not_make(tmp_path):
    out = tmp_path / "m.onnx"
    request = ModelRequest("faster_vit_0_224", overrides=dict(dim=32, in_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4]))
    plan_export(request, OutputTarget(out), verify=False).run(quiet_steps())
    with pytest.raises(FvdeployError, match="exists"):
        plan_export(request, OutputTarget(out), verify=False)
    bytes_before = out.read_bytes()
    graph = onnx.load(str(out))
    assert read_record(out).model == embedded_record(out).model
    assert graph.producer_name == "fvdeploy" and bytes_before == out.read_bytes()
