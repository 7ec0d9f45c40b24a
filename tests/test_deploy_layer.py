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
from fastervit_deploy.system.errors import FvdeployError, MissingDependency
from fastervit_deploy.core.model_spec import ModelDescription, resolve_model
from fastervit_deploy.core.options import ModelRequest, OnnxOptions, OutputTarget, Provider, RunOptions
from fastervit_deploy.plan import plan_export
from fastervit_deploy.artifact import read_record
from fastervit_deploy.core.record import sidecar_path
from fastervit_deploy.onnx.metadata import embedded_record
from fastervit_deploy.onnx.runner import OnnxRuntimeRunner

from .helpers import ROOT
from .helpers import assert_one_line_error, cli, export_tiny, quiet_steps, tiny_checkpoint

PACKAGES = ("fastervit", "fastervit_deploy")


def module_imports() -> dict[str, set[str]]:
    """Every module of ours and the modules of ours it imports (at any depth in the file)."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
            graph[name] = [(base, node) for node in ast.walk(ast.parse(path.read_text()))
                           if isinstance(node, (ast.Import, ast.ImportFrom))]

    def imported(base: str, node) -> set[str]:
        """``from pkg import sub`` imports the submodule; ``from pkg import name`` runs the package's __init__."""
        if isinstance(node, ast.Import):
            return {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        if node.level:
            root = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
            mod = f"{root}.{node.module}" if node.module else root
        elif node.module and node.module.split(".")[0] in PACKAGES:
            mod = node.module
        else:
            return set()
        return {f"{mod}.{a.name}" if f"{mod}.{a.name}" in graph else mod for a in node.names}

    edges = {m: set().union(*(imported(b, n) for b, n in nodes)) if nodes else set() for m, nodes in graph.items()}
    return {m: {t for t in ts if t in graph and t != m} for m, ts in edges.items()}


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

    for module in graph:  # packages' __init__ modules included: `from .. import x` runs them
        visit(module, [module])
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
    assert "must end in" in result.stderr and result.stderr.count("\n") == 1
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


@pytest.mark.gpu(needs="onnxruntime-gpu")
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
    plan_export(request, OutputTarget(out), OnnxOptions(no_verify=True)).run(quiet_steps())
    with pytest.raises(FvdeployError, match="exists"):
        plan_export(request, OutputTarget(out), OnnxOptions(no_verify=True))
    bytes_before = out.read_bytes()
    graph = onnx.load(str(out))
    assert read_record(out).model == embedded_record(out).model
    assert graph.producer_name == "fvdeploy" and bytes_before == out.read_bytes()


# Lowest first: a module may import its own layer's modules and lower layers' only. Packages' __init__ modules are
# placed like their modules; the root package (its public API, `fastervit_deploy.preprocess`) sits on top.
LAYERS = (("system", "version"), ("core",), ("data",), ("graph",), ("onnx", "quantize", "tensorrt", "coreml"), ("formats",),
          ("artifact",), ("use", "triton"), ("plan",), ("cli", "__main__"))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "fastervit_deploy":
        return None
    if len(parts) == 1:
        return len(LAYERS)
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def test_every_import_points_down_the_layers():
    graph = module_imports()
    placed = {m for m in graph if m.split(".")[0] == "fastervit_deploy"}
    assert {"fastervit_deploy", "fastervit_deploy.cli", "fastervit_deploy.core"} <= placed  # __init__ modules too
    assert all(_layer(m) is not None for m in placed), sorted(m for m in placed if _layer(m) is None)
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() if m in placed for t in targets
                    if t in placed and _layer(t) > _layer(m))
    assert upward == []


def _groups_samples():
    from fastervit_deploy.core.options import (
        AccuracyTarget, BatchProfile, BuilderOptions, CalibrationMethod, CalibrationOptions, ComputeUnits, CoreMLOptions,
        DeploymentTarget, Fallback, ImagesOption, InstanceKind, LabelledData, TargetOptions, OnnxOptions, OnnxSource, PrecisionFlags,
        QuantBackend, Simplifier, TensorRTRuntime, TritonBackend, TritonOptions, TunedBatchProfile)
    from fastervit_deploy.core.precision import Precision, QuantTarget, Tolerance

    # Every reproduced field of each group away from its default (PrecisionFlags: one flag at a time).
    return [
        ModelRequest("faster_vit_0_any_res", pretrained=True, checkpoint=Path("ck.pth"), resolution=(160, 288),
                     window_size=(7, 7, 12, 6),
                     ct_size=3, seed=4, features=(1, 3), checkpoint_prefix="backbone.0.", labels=Path("names.txt")),
        BatchProfile(2, 6), TunedBatchProfile(2, 6, 4),
        OnnxOptions(18, Simplifier.none, False, True), OnnxOptions(external_data=True),
        PrecisionFlags(fp16=True), PrecisionFlags(int8=True),
        TargetOptions(QuantTarget.onnxruntime_cpu, ("LayerNormalization", "Softmax")),
        PrecisionFlags(fp8=True),
        CalibrationOptions(Path("calib"), 64, CalibrationMethod.max, Path("s.cache"), QuantBackend.onnxruntime,
                           ("/levels.3/*", "/head*")),
        BuilderOptions(TensorRTRuntime.tensorrt_rtx, ("8.9", "12.0"), Path("t.cache"), 2.5, 4, True),
        AccuracyTarget(Path("val"), Path("val.txt"), 64, Fallback.auto, 0.5, 3), LabelledData(Path("val"), Path("v.txt"), 9),
        CoreMLOptions(Precision.fp32, 4, ComputeUnits.cpu_only, DeploymentTarget.iOS18, True, ((224, 224), (160, 288))),
        RunOptions(Provider.cuda, 1), ImagesOption(Path("imgs")), OnnxSource(Path("m.onnx")),
        TritonOptions(Path("repo"), ("a", "b"), 2, 3, 50, (2, 8), TritonBackend.python, InstanceKind.cpu, True, True, True),
        Tolerance(1e-3, 0.9, 0.5),
    ]


@pytest.mark.parametrize("sample", _groups_samples(), ids=lambda g: type(g).__name__)
def test_every_option_group_round_trips_through_the_command_line(sample):
    """One declaration gives the Typer option, the parsed value and the reproducing argv: they agree."""
    import typer
    from typer.testing import CliRunner

    from fastervit_deploy.cli.groups import command as typer_command

    kind = type(sample)
    reproduced = {f.name for f, opt, _ in kind.declared() if opt.reproduce}
    if kind.__name__ != "PrecisionFlags" and sample.changed() != ("external_data",):
        assert set(sample.changed()) == reproduced  # the sample exercises every option of the group
    seen = []

    def command(group: kind) -> None:  # noqa: ANN001 - the group class is the annotation
        seen.append(group)

    command.__annotations__ = {"group": kind, "return": None}
    app = typer.Typer()
    app.command()(typer_command(command))
    app.command("other")(lambda: None)  # two commands: the first is addressed by name
    result = CliRunner().invoke(app, ["command", *sample.argv()])
    assert result.exit_code == 0, result.output
    assert seen == [sample]
    assert seen[0].given == sample.given  # what the command line named is what the group says was given


def test_a_default_given_on_the_command_line_is_given_and_reproduced():
    """`--method entropy` names the default: it is still given (FP8's own default is max), and kept in the argv."""
    import typer
    from typer.testing import CliRunner

    from fastervit_deploy.cli.groups import command as typer_command
    from fastervit_deploy.core.options import CalibrationOptions

    seen = []

    def command(calibration: CalibrationOptions) -> None:
        seen.append(calibration)

    command.__annotations__ = {"calibration": CalibrationOptions, "return": None}
    app = typer.Typer()
    app.command()(typer_command(command))
    app.command("other")(lambda: None)
    for argv, given in ((["--method", "entropy"], {"method"}), ([], set()), (["--calib-images", "512"], {"calib_images"})):
        seen.clear()
        result = CliRunner().invoke(app, ["command", *argv])
        assert result.exit_code == 0, result.output
        assert seen[0] == CalibrationOptions() and seen[0].given == given  # the default values, told apart by given
        assert seen[0].argv() == argv


@pytest.mark.parametrize("group,values,message", [
    ("BuilderOptions", dict(opt_level=6), "--opt-level must be 0..5, got 6"),
    ("CalibrationOptions", dict(calib_images=0), "--calib-images must be at least 1, got 0"),
    ("CoreMLOptions", dict(max_batch=0), "--max-batch must be at least 1, got 0"),
    ("Tolerance", dict(min_cosine=1.5), "--min-cosine must be -1..1, got 1.5"),
    ("LabelledData", dict(limit=0), "--limit must be at least 1, got 0"),
])
def test_declared_bounds_are_enforced_by_the_group_itself(group, values, message):
    """The Python API meets the same bounds as the command line (one declaration, one check)."""
    from fastervit_deploy.core import options, precision

    kind = getattr(options, group, None) or getattr(precision, group)
    with pytest.raises(FvdeployError, match=message.replace(".", r"\.")):
        kind(**values)


def test_unexpected_errors_are_internal_errors_and_debug_keeps_their_causes(monkeypatch):
    import fastervit_deploy.cli.tables as tables

    def broken(pattern):
        try:
            {}["the cause"]
        except KeyError as err:
            raise ValueError("a bug") from err

    monkeypatch.setattr(tables, "model_rows", broken)
    result = cli("models")
    assert result.exit_code == 1, result.output

    lines = result.output.strip().splitlines()
    assert lines == ["internal error: ValueError: a bug (a bug in fvdeploy: rerun with --debug for the traceback "
                     "and report it)"]
    with pytest.raises(ValueError, match="a bug") as raised:
        cli("--debug", "models")
    assert isinstance(raised.value.__cause__, KeyError)  # --debug shows the whole chain
    monkeypatch.setattr(tables, "model_rows", lambda pattern: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert_one_line_error(cli("models"), r"^error: No space left on device", code=2)  # the environment, not a bug


@pytest.mark.parametrize("args", [["--help"], ["models"], ["formats"], ["export-onnx", "--help"]])
def test_help_models_and_formats_load_nothing_heavy(args, tmp_path):
    """What keeps `fvdeploy --help` and `fvdeploy models` instant: no torch, numpy or onnx behind them."""
    code = ("import sys; from fastervit_deploy.cli import run; code = run(sys.argv[1:]); "
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules); "
            "print('HEAVY', heavy); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("name", __import__("fastervit").list_models())
def test_parameter_counts_from_the_configuration_equal_a_built_model(name):
    """`fvdeploy models` counts parameters without building a model: the count is a meta-device build's."""
    from fastervit import build_meta, count_params, get_entry

    cfg = get_entry(name).config
    assert count_params(cfg) == build_meta(name).num_params()
    backbone = cfg.replace(out_indices=(0, 2), feature_norms=True)
    with torch.device("meta"):
        from fastervit import FasterViT

        assert count_params(backbone) == FasterViT(backbone).num_params()


def test_model_options_must_agree_with_the_record(tmp_path):
    random, _ = export_tiny(tmp_path, filename="random.onnx", verify=False)
    # The seed of random weights was silently ignored once: now it is checked like every model option.
    assert_one_line_error(cli("verify", random, "--seed", 3), r"--seed contradicts random.onnx's record", 2)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth.tar")
    path = tmp_path / "m.onnx"
    assert cli("export-onnx", "--model", "faster_vit_0_224", "--checkpoint", ckpt, "-o", path, "--no-verify").exit_code == 0
    # Another model, another checkpoint, a seed beside a checkpoint: each contradicts the record (exit 2).
    assert_one_line_error(cli("verify", path, "--seed", 3), r"--seed sets random weights: m.onnx was made from a checkpoint", 2)
    assert_one_line_error(cli("verify", path, "--model", "faster_vit_1_224"), r"--model contradicts m.onnx's record", 2)
    other = tiny_checkpoint(tmp_path / "other.pth.tar", seed=1)
    assert_one_line_error(cli("verify", path, "--checkpoint", other), r"other.pth.tar is not the one m.onnx was made from", 2)
    # Options that say what the record says are accepted; so is the checkpoint's new place.
    moved = shutil.move(ckpt, tmp_path / "moved.pth.tar")
    assert_one_line_error(cli("verify", path), r"pass --checkpoint with its new path", 2)
    result = cli("verify", path, "--checkpoint", moved, "--model", "faster_vit_0_224", "--batch", 2)
    assert result.exit_code == 0, result.output


def test_a_record_belongs_to_one_file(tmp_path):
    path, _ = export_tiny(tmp_path, filename="m.onnx", verify=False)
    half = tmp_path / "m_fp16.onnx"
    assert cli("quantize", path, "--fp16", "-o", half).exit_code == 0
    own = sidecar_path(path).read_text()
    # Another artifact's sidecar copied over this one's: refused for what it is, before any comparison.
    shutil.copyfile(sidecar_path(half), sidecar_path(path))
    assert_one_line_error(cli("verify", path), r"sidecar m.onnx.json does not describe m.onnx: it disagrees with the "
                                               r"record embedded in the file \(.*precision", 2)
    # A hand-edited precision: the same.
    edited = json.loads(own)
    edited["precision"] = "int8"
    sidecar_path(path).write_text(json.dumps(edited))
    assert_one_line_error(cli("verify", path), r"disagrees with the record embedded in the file \(precision\)", 2)
    # Renamed together with its sidecar: the content is the recorded one, so both are accepted.
    sidecar_path(path).write_text(own)
    path.rename(tmp_path / "fv.onnx")
    sidecar_path(path).rename(tmp_path / "fv.onnx.json")
    result = cli("verify", tmp_path / "fv.onnx", "--batch", 2, "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v.json").read_text())["precision"] == "fp32"
