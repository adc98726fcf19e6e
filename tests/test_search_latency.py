"""Latency before training: real export + runtime timing, the cache, tables, refusal for targets
that are not this machine, and rejection of over-budget candidates without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.errors import ConfigError
from edgekd.models import list_students
from edgekd.search import latency
from edgekd.search.latency import (
    TABLE_FORMAT,
    Estimate,
    LatencyPredictor,
    arch_signature,
    resolved_args,
)
from tests.pricing import count_exports, pin_machine
from tests.test_models import ACC, _spec

K = 6


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about sources and the cache: the machine reads as quiet (its real load
    would flag prices noisy, have them re-priced, and wait for quiet; see test_search_quiet)."""
    pin_machine(monkeypatch)


def test_local_prediction_is_measured_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_exports(monkeypatch)
    predictor = LatencyPredictor("cpu", ACC, K, tmp_path, duration_s=0.2)
    assert predictor.source == "local" and "measured on this machine" in predictor.describe()
    first = predictor.predict("tcn_tiny", {"width": 8, "levels": 2})
    assert calls == ["tcn_tiny"]
    assert first.source == "local" and 0 < first.p50_ms < 50
    assert first.rss_mb is not None and first.rss_mb > 0 and not first.noisy
    assert first.conditions is not None and first.conditions["reason"] == ""
    # stem 1x1 conv + BN, two k=5 conv + BN levels, the head
    assert first.params == (3 * 8 + 2 * 8) + 2 * (8 * 8 * 5 + 2 * 8) + (8 * K + K)
    assert 1_000 < first.int8_bytes < 100_000
    # the same architecture again, and from a fresh predictor reading the JSON: no export
    assert predictor.predict("tcn_tiny", {"width": 8, "levels": 2}) == first
    again = latency.predict_latency("tcn_tiny", {"levels": 2, "width": 8, "kernel_size": 5}, ACC,
                                    K, "cpu", tmp_path)  # fmt: skip
    assert again == first
    assert calls == ["tcn_tiny"]
    # another architecture is priced; a bigger one is slower to run and larger
    bigger = predictor.predict("tcn_tiny", {"width": 48, "levels": 5, "kernel_size": 7})
    assert calls == ["tcn_tiny", "tcn_tiny"]
    assert bigger.int8_bytes > 5 * first.int8_bytes and bigger.p50_ms > first.p50_ms


def test_signature_is_canonical_and_complete() -> None:
    a = arch_signature("tcn_tiny", resolved_args("tcn_tiny", {"width": 8}, ACC, K))
    b = arch_signature("tcn_tiny", resolved_args("tcn_tiny", {"width": 8, "kernel_size": 5},
                                                 ACC, K))  # fmt: skip
    assert a == b
    assert a.startswith("tcn_tiny{") and '"input_shape":[3,64]' in a and '"num_classes":6' in a
    assert a != arch_signature("tcn_tiny", resolved_args("tcn_tiny", {"width": 8}, ACC, K + 1))


def test_non_local_target_needs_a_table_or_a_ray_node(tmp_path: Path) -> None:
    for target in ("jetson-orin-nano", "x86-nvidia"):
        refusal = f"--target {target} runs on tensorrt.*--latency-table"
        with pytest.raises(ConfigError, match=refusal):
            LatencyPredictor(target, ACC, K, tmp_path)

    class NoNode:
        def has_resource(self, name: str) -> bool:
            return False

    with pytest.raises(ConfigError, match="resources '\\{\"jetson-orin-nano\": 1\\}'"):
        LatencyPredictor("jetson-orin-nano", ACC, K, tmp_path, executor=NoNode())


def test_table_gives_the_device_figure_never_this_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_exports(monkeypatch)
    known = arch_signature("tcn_tiny", resolved_args("tcn_tiny", {"width": 8}, ACC, K))
    table = tmp_path / "orin.json"
    table.write_text(json.dumps({
        "format": TABLE_FORMAT, "target": "jetson-orin-nano", "device": {"gpus": ["Orin"]},
        "p50_ms": {known: 0.321},
    }))  # fmt: skip
    predictor = LatencyPredictor("jetson-orin-nano", ACC, K, tmp_path, table=table)
    assert predictor.source == "table" and "recorded on ['Orin']" in predictor.describe()
    hit = predictor.predict("tcn_tiny", {"width": 8})
    assert (hit.p50_ms, hit.source) == (0.321, "table") and hit.int8_bytes > 0
    miss = predictor.predict("tcn_tiny", {"width": 16})
    assert miss.p50_ms is None and miss.source == "none" and "not in" in miss.detail
    assert calls == ["tcn_tiny", "tcn_tiny"]  # sizes are measured here: they do not depend on it
    with pytest.raises(ConfigError, match="recorded for target 'jetson-orin-nano', not --target"):
        LatencyPredictor("cpu", ACC, K, tmp_path, table=table)
    with pytest.raises(ConfigError, match="--latency-table .*not found"):
        LatencyPredictor("cpu", ACC, K, tmp_path, table=tmp_path / "none.json")


def test_record_latency_table_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    latency.record_latency_table([("tcn_tiny", {"width": 8, "levels": 2})], ACC, K, "cpu-ort",
                                 path, duration_s=0.1)  # fmt: skip
    table = latency.LatencyTable.load(path, "cpu-ort")
    predictor = LatencyPredictor("cpu-ort", ACC, K, tmp_path, table=path)
    est = predictor.predict("tcn_tiny", {"width": 8, "levels": 2})
    assert est.source == "table" and est.p50_ms == next(iter(table.p50_ms.values())) > 0


def test_over_budget_candidates_are_rejected_without_training(
    teacher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekd.executor import LocalExecutor
    from edgekd.search import SearchSpec, run, run_search

    priced: list[str] = []
    trained: list[object] = []

    def slow(self: LatencyPredictor, arch: str, args: dict) -> Estimate:
        priced.append(arch)
        return Estimate(f"{arch}{args}", 1000, 2000, 9.0, "local", "stub timing")

    def no_training(*args: object, **kwargs: object) -> None:
        trained.append(args)
        raise AssertionError("a candidate was trained")

    monkeypatch.setattr(LatencyPredictor, "predict", slow)
    monkeypatch.setattr(LocalExecutor, "submit", no_training)
    spec = SearchSpec(teacher=teacher_run, out=tmp_path / "s", budget_ms=0.5, trials=1,
                      archs=("tcn_tiny",))  # fmt: skip
    with pytest.raises(run.SearchStopped, match="candidates could not be trained.*--budget-ms"):
        run_search(spec, log=lambda _line: None)
    assert len(priced) == run.REJECTIONS_PER_TRIAL + 2  # the anchor, then the drawn ones
    import optuna

    study = optuna.load_study(study_name=run.STUDY_NAME,
                              storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")  # fmt: skip
    anchor, *drawn = study.trials
    # The anchor (the default student) is trained even over budget; nothing drawn is.
    assert anchor.user_attrs.get("anchor") is True and len(trained) == 1
    assert {t.state.name for t in drawn} == {"FAIL"}  # rejected, never PRUNED
    assert all("p50 9.0000 ms > --budget-ms 0.5" in t.user_attrs["rejected"] for t in drawn)


@pytest.mark.parametrize("name", list_students())
def test_every_student_quantizes_to_lint_clean_qdq(name: str, tmp_path: Path) -> None:
    """What the search prices must be deployable: int8 PTQ passes the TensorRT Q/DQ lint (inside
    quantize_ptq) and every conv / matmul reads quantized weights."""
    import onnx

    exported = latency.export_candidate(name, {}, _spec(name), K, "onnxruntime", tmp_path)
    graph = onnx.load(str(exported.files[0])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    produced_by = {out: n.op_type for n in graph.node for out in n.output}
    inits = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight = node.input[1]
            assert produced_by.get(weight) == "DequantizeLinear" or weight not in inits, node.name
    assert exported.int8_bytes == exported.files[0].stat().st_size


def test_ray_source_runs_the_measurement_on_the_targets_node(tmp_path: Path) -> None:
    """With a Ray node declaring the target as a resource, the export-and-time function is
    submitted there (this machine never times a TensorRT target) and labelled as such."""
    from concurrent.futures import Future

    from edgekd.executor import Resources

    submitted: list[tuple[object, tuple[object, ...], Resources]] = []

    class Cluster:
        def has_resource(self, name: str) -> bool:
            return name == "jetson-orin-nano"

        def submit(self, fn: object, *args: object, resources: Resources) -> Future:
            submitted.append((fn, args, resources))
            done: Future = Future()
            cond = {"quiet_reference_ms": 4.0, "noisy": False}
            done.set_result({"p50_ms": 0.9, "int8_bytes": 4321, "params": 766, "machine": {},
                             "rss_mb": 80.0, "rss_over_import_mb": 3.0, "noisy": False,
                             "conditions": cond})  # fmt: skip
            return done

    predictor = LatencyPredictor("jetson-orin-nano", ACC, K, tmp_path, executor=Cluster())
    assert predictor.source == "ray" and "'jetson-orin-nano'" in predictor.describe()
    est = predictor.predict("tcn_tiny", {"width": 8})
    (fn, args, resources), = submitted
    assert fn is latency.measure_here and args[0] == "tcn_tiny" and args[4] == "jetson-orin-nano"
    assert resources.custom == {"jetson-orin-nano": 1}
    assert (est.p50_ms, est.int8_bytes, est.source, est.rss_mb) == (0.9, 4321, "ray", 80.0)
    predictor.predict("tcn_tiny", {"width": 8})
    assert len(submitted) == 1  # cached


def test_latency_table_command_records_what_a_search_could_not_price(
    teacher_run: Path, tmp_path: Path
) -> None:
    from edgekd.checkpoint import read_sidecar
    from edgekd.modalities import ModalitySpec
    from tests.conftest import run_cli

    search = tmp_path / "search"
    search.mkdir()
    missing = {"arch": "tcn_tiny", "args": {"width": 8, "levels": 2, "kernel_size": 3}}
    (search / "search.json").write_text(json.dumps({"trials": [
        {**missing, "state": "rejected", "rejected": "no latency (not in t.json)"},
        {**missing, "state": "rejected", "rejected": "no latency (not in t.json)"},
        {"arch": "tcn_tiny", "args": {"width": 16}, "state": "complete", "rejected": None},
    ]}))  # fmt: skip
    table = tmp_path / "table.json"
    base = ["latency-table", "--teacher", str(teacher_run), "--target", "cpu-ort", "--out",
            str(table)]  # fmt: skip
    result = run_cli([*base, "--from-search", str(search), "--seconds", "0.1"])
    assert result.exit_code == 0, result.output
    assert "(1 architectures)" in result.output  # the repeat is recorded once

    side = read_sidecar(teacher_run)
    spec = ModalitySpec.from_dict(side["specs"][side["default_student"]])
    predictor = LatencyPredictor("cpu-ort", spec, len(side["labels"]), tmp_path, table=table)
    assert predictor.predict(missing["arch"], missing["args"]).source == "table"
    refused = run_cli(base)
    assert refused.exit_code == 2 and "give one of --archs" in refused.output
