"""Model registries: every registered student and teacher, ONNX export of students, feature taps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError, InputError
from edgekd.modalities import ModalitySpec, feature_shape
from edgekd.models import (
    FeatureTap,
    create_student,
    create_teacher,
    list_students,
    list_teachers,
)

K = 5  # classes in the small matrix models

ACC = ModalitySpec(name="accel", kind="timeseries", rate_hz=50, channels=3, window=64, hop=32)
GYRO = ModalitySpec(name="gyro", kind="timeseries", rate_hz=50, channels=3, window=64, hop=32)
# 1 + (2000 - 200) // 100 = 19 log-mel frames of 20 mels.
VOICE = ModalitySpec(
    name="voice",
    kind="audio",
    rate_hz=8000,
    channels=1,
    window=2000,
    hop=1000,
    n_mels=20,
    n_fft=200,
    hop_length=100,
)
FACE = ModalitySpec(
    name="face", kind="image", rate_hz=0, channels=3, window=0, hop=0, size=(16, 16)
)

# The spec each student is exercised on (default: the accelerometer).
STUDENT_SPEC = {"dscnn_audio": VOICE, "bcresnet_audio": VOICE}
# Edge budget per student (parameters, with the matrix's small inputs). A new student must add
# itself here: test_every_student_has_a_budget fails otherwise.
PARAM_BUDGET = {
    "tcn_tiny": 30_000, "tcn_small": 120_000, "dscnn_audio": 30_000, "dsres_ts": 10_000,
    "bcresnet_audio": 10_000,
}  # fmt: skip
TEACHER_SPECS = {
    "imu": {"accel": ACC, "gyro": GYRO},  # the HAR case
    "audio+image": {"voice": VOICE, "face": FACE},  # the paper's speech student / face teacher
}

# ONNX ops that TensorRT 10 (its ONNX parser's operator list) and OpenVINO's ONNX frontend both
# import, in FP32 and as int8 Q/DQ. Anything else in a student graph (e.g. LayerNormalization,
# GRU, Einsum, Loop/If from data-dependent control flow) would break a deployment target.
ONNX_OP_ALLOW = {
    "Add",
    "BatchNormalization",
    "Constant",
    "Conv",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "Mul",
    "Pad",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
}


def _spec(name: str) -> ModalitySpec:
    return STUDENT_SPEC.get(name, ACC)


def _student(name: str, seed: int = 0, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_student(name, _spec(name), K, **kwargs)


# Per-architecture arguments for the registry matrix (composite teachers need members).
MATRIX_TEACHER_ARGS: dict[str, dict[str, object]] = {
    "fusion": {"modality_dropout": 0.2},
    "ensemble": {
        "members": [
            {"arch": "fusion", "arch_args": {"width": 16, "modality_dropout": 0.2}},
            {"arch": "fusion", "arch_args": {"width": 8, "fusion": "mean"}},
        ]
    },
}


def _teacher(name: str, case: str, seed: int = 0, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_teacher(name, TEACHER_SPECS[case], K, **kwargs)


def _matrix_teacher(name: str, case: str, seed: int = 0) -> torch.nn.Module:
    return _teacher(name, case, seed, **MATRIX_TEACHER_ARGS[name])


def _teacher_input(case: str, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        m: torch.randn(batch, *feature_shape(s), generator=g)
        for m, s in TEACHER_SPECS[case].items()
    }


def _student_input(name: str, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *feature_shape(_spec(name)), generator=g)


def _assert_grads_reach_every_parameter(model: torch.nn.Module) -> None:
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


# --- registry ------------------------------------------------------------------------------


def test_registries_list_builtins() -> None:
    assert {"tcn_tiny", "tcn_small", "dscnn_audio", "dsres_ts", "bcresnet_audio"} <= set(
        list_students()
    )
    assert {"fusion", "ensemble"} <= set(list_teachers())
    assert set(MATRIX_TEACHER_ARGS) == set(list_teachers()), "give a new teacher matrix arguments"
    assert list_students() == sorted(list_students())


def test_every_student_has_a_budget() -> None:
    assert set(list_students()) <= set(PARAM_BUDGET), "add the new student to PARAM_BUDGET"


@pytest.mark.parametrize(
    ("create", "role"), [(create_student, "student"), (create_teacher, "teacher")]
)
def test_unknown_name_lists_registered(create: object, role: str) -> None:
    spec_arg = ACC if role == "student" else {"accel": ACC}
    with pytest.raises(ConfigError, match=f"unknown {role}.*'nope'.*registered: .*") as err:
        create("nope", spec_arg, K)  # type: ignore[operator]
    names = list_students() if role == "student" else list_teachers()
    assert all(n in str(err.value) for n in names)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="does not take argument.*depth.*accepts: width"):
        create_student("tcn_tiny", ACC, K, depth=3)
    with pytest.raises(ConfigError, match="width must be a positive int"):
        create_student("tcn_tiny", ACC, K, width=0)
    with pytest.raises(ConfigError, match="num_classes must be an int >= 2"):
        create_student("tcn_tiny", ACC, 1)
    with pytest.raises(ConfigError, match="takes modality kinds timeseries, audio.*'image'"):
        create_student("tcn_tiny", FACE, K)
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        create_student("tcn_tiny", ACC, K, width=np.int64(8))
    with pytest.raises(ConfigError, match="modality_dropout must be in"):
        create_teacher("fusion", {"accel": ACC}, K, modality_dropout=1.0)
    with pytest.raises(ConfigError, match="fusion='sum' is not one of concat, mean"):
        create_teacher("fusion", {"accel": ACC}, K, fusion="sum")


def test_rebuild_checks_shapes_and_classes() -> None:
    model = create_student("tcn_tiny", ACC, K, width=8)
    longer = ModalitySpec(
        name="accel", kind="timeseries", rate_hz=50, channels=3, window=128, hop=64
    )
    with pytest.raises(
        ConfigError, match=r"input shape \[3, 64\] but the modality spec gives \[3, 128\]"
    ):
        create_student(model.arch, longer, **model.arch_args)
    with pytest.raises(ConfigError, match="arch_args say num_classes=5 but 7"):
        create_student(model.arch, ACC, 7, **model.arch_args)
    teacher = create_teacher("fusion", {"accel": ACC, "gyro": GYRO}, K)
    with pytest.raises(ConfigError, match="name modalities"):
        create_teacher(teacher.arch, {"accel": ACC}, **teacher.arch_args)


# --- students: the matrix -----------------------------------------------------------------


@pytest.mark.parametrize("name", list_students())
def test_student_forward_backward_and_rebuild(name: str) -> None:
    model = _student(name)
    x = _student_input(name, 4)
    emb = model.forward_features(x)
    assert emb.shape == (4, model.embed_dim)
    assert isinstance(model.classifier, torch.nn.Linear)
    logits = model(x)
    assert logits.shape == (4, K)
    torch.testing.assert_close(logits, model.classifier(emb))
    logits.square().sum().backward()
    _assert_grads_reach_every_parameter(model)

    # arch + arch_args (through JSON, as a sidecar stores them) rebuild the same architecture,
    # with every hyperparameter recorded (defaults included).
    args = json.loads(json.dumps(model.arch_args))
    assert args["num_classes"] == K and args["input_shape"] == list(feature_shape(_spec(name)))
    again = create_student(model.arch, _spec(name), **args)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert again.arch_args == args


@pytest.mark.parametrize("name", list_students())
def test_student_deterministic_for_a_seed(name: str) -> None:
    x = _student_input(name, 3)
    a, b, c = _student(name, seed=7), _student(name, seed=7), _student(name, seed=8)
    for model in (a, b, c):
        model.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.allclose(a(x), c(x))


@pytest.mark.parametrize("name", list_students())
def test_student_within_param_budget(name: str) -> None:
    n = sum(p.numel() for p in _student(name).parameters())
    assert 1_000 <= n <= PARAM_BUDGET[name]


def test_student_param_counts() -> None:
    """The figures in edgekd/models/students.py's docstring (12 classes, 3 axes, 40 mels)."""
    acc128 = ModalitySpec(
        name="accel", kind="timeseries", rate_hz=50, channels=3, window=128, hop=64
    )
    voice = ModalitySpec(
        name="voice", kind="audio", rate_hz=16000, channels=1, window=16000, hop=8000
    )

    def count(name: str, spec: ModalitySpec, **kw: int) -> int:
        return sum(p.numel() for p in create_student(name, spec, 12, **kw).parameters())

    widths = {8: 1_492, 16: 5_532, 24: 12_132, 32: 21_292, 40: 33_012}
    assert {w: count("tcn_tiny", acc128, width=w) for w in widths} == widths
    assert count("tcn_tiny", acc128) == widths[32] <= 30_000  # the default fits the edge budget
    assert count("tcn_small", acc128) == 104_140
    assert count("dscnn_audio", voice) == 26_764
    assert count("dsres_ts", acc128) == 5_100
    assert count("bcresnet_audio", voice) == 4_380


def test_bcresnet_broadcasts_the_temporal_branch_over_frequency() -> None:
    """The f1 branch sees the frequency-averaged map: it adds one value per (channel, time) to
    every frequency row, so f2 rows that differ keep their differences exactly."""
    from edgekd.models.encoders import BroadcastResidualBlock

    torch.manual_seed(0)
    block = BroadcastResidualBlock(4, 4).eval()
    x = torch.randn(2, 4, 6, 9)
    with torch.no_grad():
        f2 = block.freq(x)
        f1 = block.temporal(f2.mean(dim=2, keepdim=True))
        assert f1.shape == (2, 4, 1, 9)
        torch.testing.assert_close(block(x), torch.relu(x + f2 + f1))
    with pytest.raises(ConfigError, match="takes modality kinds audio"):
        create_student("bcresnet_audio", ACC, K)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Each student exported once: dynamo, opset 18, dynamic batch, weights inside the file."""
    out = tmp_path_factory.mktemp("onnx")
    result = {}
    for name in list_students():
        model = _student(name).eval()
        # Non-trivial BatchNorm statistics, so that folding them into Conv is actually checked.
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        path = out / f"{name}.onnx"
        torch.onnx.export(
            model,
            (_student_input(name, 2),),
            path,
            dynamo=True,
            external_data=False,
            opset_version=18,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        result[name] = (model, path)
    return result


@pytest.mark.parametrize("name", list_students())
def test_student_onnx_export(name: str, exported: dict[str, tuple[torch.nn.Module, Path]]) -> None:
    import onnx
    import onnxruntime as ort

    model, path = exported[name]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(name)] == [path.name]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 18
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= ONNX_OP_ALLOW, (
        f"ops outside the TensorRT/OpenVINO allow-list: {ops - ONNX_OP_ALLOW}"
    )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == list(feature_shape(_spec(name)))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = _student_input(name, batch, seed=batch)
        got = session.run(["logits"], {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list_students())
def test_student_onnx_runs_in_openvino(
    name: str, exported: dict[str, tuple[torch.nn.Module, Path]]
) -> None:
    import openvino as ov

    model, path = exported[name]
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    x = _student_input(name, 3, seed=3)
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=0, atol=1e-4)


def _prefix_unchanged_by_future(name: str, path: str, t0: int) -> tuple[bool, bool]:
    """Perturb inputs at times >= t0: (features before t0 unchanged, features after changed)."""
    model = _student(name).eval()
    x = _student_input(name, 2)
    future = x.clone()
    future[..., t0:] = torch.randn_like(future[..., t0:]) * 5
    with torch.no_grad(), FeatureTap(model, [path]) as tap:
        model(x)
        before = tap[path]
        model(future)
        after = tap[path]
    return (
        torch.equal(before[..., :t0], after[..., :t0]),
        not torch.allclose(before[..., t0:], after[..., t0:]),
    )


def test_tcn_is_causal() -> None:
    # The last block's per-time features (before pooling) at t < t0 ignore everything from t0 on.
    for t0 in (1, 20, 63):
        unchanged, changed = _prefix_unchanged_by_future("tcn_tiny", "blocks", t0)
        assert unchanged and changed


def test_causality_check_detects_a_non_causal_model() -> None:
    # The same check on the DS-CNN (symmetric 'same' padding) must fail: the test can tell.
    unchanged, _ = _prefix_unchanged_by_future("dscnn_audio", "blocks", 10)
    assert not unchanged


# --- teachers: the matrix -----------------------------------------------------------------


@pytest.mark.parametrize("case", list(TEACHER_SPECS))
@pytest.mark.parametrize("name", list_teachers())
def test_teacher_forward_backward_and_rebuild(name: str, case: str) -> None:
    model = _matrix_teacher(name, case)
    x = _teacher_input(case, 4)
    emb = model.forward_features(x)
    assert emb.shape == (4, model.embed_dim)
    logits = model(x)
    assert logits.shape == (4, K)
    logits.square().sum().backward()
    _assert_grads_reach_every_parameter(model)

    # Rebuilt from JSON arch_args with the specs in another order: same weight layout.
    args = json.loads(json.dumps(model.arch_args))
    reordered = dict(reversed(list(TEACHER_SPECS[case].items())))
    again = create_teacher(model.arch, reordered, **args)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", list(TEACHER_SPECS))
@pytest.mark.parametrize("name", list_teachers())
def test_teacher_deterministic_for_a_seed(name: str, case: str) -> None:
    x = _teacher_input(case, 3)
    a, b, c = (_matrix_teacher(name, case, seed=s).eval() for s in (3, 3, 4))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.allclose(a(x), c(x))


def _fused_inputs(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fused vector entering the teacher's head (B, M * width) for concat fusion."""
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
    return seen[0]


def test_modality_dropout_zeroes_whole_modalities_never_all() -> None:
    model = _teacher("fusion", "imu", modality_dropout=0.8)
    x = _teacher_input("imu", 256)
    with torch.no_grad():
        fused = _fused_inputs(model.train(), x).reshape(256, 2, -1)
        kept = fused.abs().sum(dim=2) > 0  # (B, M): an encoder output is all-zero iff dropped
        assert kept.any(dim=1).all(), "a sample lost every modality"
        dropped_share = 1 - kept.float().mean().item()
        # p = 0.8 per modality, with one modality rescued when both drop: expected share
        # (0.8 * 0.2 * 2 + 0.64 * 1) / 2 = 0.48.
        assert 0.38 < dropped_share < 0.58
        assert not (kept[:, 0] == kept[:, 1]).all()  # per sample, per modality
        eval_kept = _fused_inputs(model.eval(), x).reshape(256, 2, -1).abs().sum(dim=2) > 0
        assert eval_kept.all()


@pytest.mark.parametrize("fusion", ["concat", "mean"])
def test_restricted_teacher_drop(fusion: str) -> None:
    model = _teacher("fusion", "imu", fusion=fusion).eval()
    x = _teacher_input("imu", 4)
    other_gyro = {**x, "gyro": torch.randn_like(x["gyro"]) * 3}
    with torch.no_grad():
        restricted = model.forward_features(x, drop={"gyro"})
        # The dropped modality is ignored, and may even be absent.
        torch.testing.assert_close(model.forward_features(other_gyro, drop={"gyro"}), restricted)
        torch.testing.assert_close(
            model.forward_features({"accel": x["accel"]}, drop=["gyro"]), restricted
        )
        assert not torch.allclose(model.forward_features(other_gyro), model.forward_features(x))
        acc_only = model.encoders["accel"](x["accel"])
        if fusion == "mean":  # the mean runs over the kept modalities only
            want = model.head(acc_only)
        else:
            want = model.head(torch.cat([acc_only, torch.zeros_like(acc_only)], dim=1))
        torch.testing.assert_close(restricted, want)


def test_teacher_input_errors() -> None:
    model = _teacher("fusion", "imu")
    x = _teacher_input("imu", 2)
    with pytest.raises(ConfigError, match="cannot drop every modality"):
        model.forward_features(x, drop={"accel", "gyro"})
    with pytest.raises(ConfigError, match="unknown modality mag"):
        model.forward_features(x, drop={"mag"})
    with pytest.raises(InputError, match="lacks modality gyro"):
        model({"accel": x["accel"]})


# --- feature taps -------------------------------------------------------------------------


def test_feature_tap_collects_named_outputs_and_cleans_up() -> None:
    model = _student("tcn_tiny", width=8).eval()
    x = _student_input("tcn_tiny", 2)
    with FeatureTap(model, ["stem", "blocks.1"]) as tap:
        with pytest.raises(KeyError, match="no output yet"):
            tap["stem"]
        logits = model(x)
        stem = tap["stem"]
        assert stem.shape == (2, 8, 64)
        torch.testing.assert_close(stem, model.stem(x))
        torch.testing.assert_close(tap["blocks.1"], model.blocks[1](model.blocks[0](stem)))
        assert tap["blocks.1"].requires_grad  # usable in a loss unless detach=True
    assert all(not m._forward_hooks for m in model.modules())
    model(x * 2)  # after exit, nothing is collected any more
    torch.testing.assert_close(tap["stem"], stem)
    torch.testing.assert_close(model(x), logits)

    with FeatureTap(model, ["stem"], detach=True) as tap:
        model(x)
    assert not tap["stem"].requires_grad


def test_feature_tap_on_teacher_and_bad_paths() -> None:
    model = _teacher("fusion", "imu").eval()
    x = _teacher_input("imu", 2)
    with FeatureTap(model, ["encoders.gyro", "head"]) as tap:
        emb = model.forward_features(x)
    assert tap["encoders.gyro"].shape == (2, model.encoders["gyro"].out_dim)
    torch.testing.assert_close(tap["head"], emb)
    with pytest.raises(ConfigError, match="no submodule 'encoders.mag'.*encoders.accel"):
        FeatureTap(model, ["encoders.mag"])
    with pytest.raises(ConfigError, match="a list of module paths"):
        FeatureTap(model, "head")


@pytest.mark.parametrize("case", list(TEACHER_SPECS))
def test_fusion_has_one_encoder_per_modality(case: str) -> None:
    model = _teacher("fusion", case)
    assert isinstance(model.encoders, torch.nn.ModuleDict)
    assert set(model.encoders) == set(TEACHER_SPECS[case])


def test_ensemble_logits_are_the_mean_of_its_members() -> None:
    from edgekd.models.teachers import TeacherEnsemble

    members = [_teacher("fusion", "imu", seed=s, width=8 * (s + 1)).eval() for s in (0, 1)]
    x = _teacher_input("imu", 5)
    drop = {"gyro"}
    with torch.no_grad():
        mean_logits = torch.stack([m(x) for m in members]).mean(0)
        mean_restricted = torch.stack([m(x, drop) for m in members]).mean(0)
        model = TeacherEnsemble(members).eval()
        torch.testing.assert_close(model(x), mean_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x, drop), mean_restricted, rtol=0, atol=1e-5)
    assert model.embed_dim == sum(m.embed_dim for m in members)
    assert all(m.classifier is None for m in model.members)


def test_ensemble_needs_two_members() -> None:
    one = {"members": [{"arch": "fusion", "arch_args": {}}]}
    with pytest.raises(ConfigError, match="at least 2 teachers"):
        _teacher("ensemble", "imu", **one)
