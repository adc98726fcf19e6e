"""Quiet pricing and the memory figure: a busy machine's timing is flagged noisy (never waited on
past the limit), a noisy cached price is taken again and a quiet one is not, the conditions are
stored in the cache, an old cache loads, and a real bundle's peak memory is measured in a fresh
process. The machine's load is simulated by pinning the condition readers; no timing is
asserted."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekd.errors import BackendUnavailable
from edgekd.search import latency, quiet
from edgekd.search.latency import (
    CACHE_FILE,
    QUIET_KEY,
    TABLE_FORMAT,
    LatencyPredictor,
    arch_signature,
    measure_bundle,
    resolved_args,
)
from edgekd.targets import get_target
from tests.pricing import count_exports, pin_machine
from tests.test_models import ACC

K = 6
SMALL = {"width": 8, "levels": 2}
CONDITION_FIELDS = {"cores", "busy_cores", "load_1m", "reference_ms", "quiet_reference_ms",
                    "noisy", "reason", "waited_s", "at"}  # fmt: skip


class Clock:
    """quiet's clock: sleeping advances it at once, and every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(quiet, "time", fake)
    return fake


def _sequence(*values: float) -> Callable[[], float]:
    """A reader returning `values` in turn, then the last one for ever."""
    it = iter(values)
    return lambda: next(it, values[-1])


# --- the waiting rule -------------------------------------------------------------------------


def test_a_busy_machine_is_waited_on_up_to_the_limit_then_flagged_noisy(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_machine(monkeypatch, reference=1.6)  # the spoiled prices' slowdown
    runs: list[int] = []
    result, cond = quiet.quietly(lambda: runs.append(1) or "p50", max_wait_s=7.0)
    assert result == "p50" and runs == [1]  # measured once, when the wait had run out
    assert sum(clock.slept) == pytest.approx(7.0) and max(clock.slept) <= quiet.POLL_S
    assert cond.noisy and "reference kernel 1.60x its quiet time" in cond.reason
    assert cond.waited_s == pytest.approx(7.0) and set(cond.to_dict()) == CONDITION_FIELDS

    clock.slept.clear()  # no wait at all: measured at once, flagged
    pin_machine(monkeypatch, busy=float(quiet.usable_cores()))
    _, cond = quiet.quietly(lambda: None, max_wait_s=0)
    assert clock.slept == [] and cond.noisy and "cores busy" in cond.reason


def test_a_machine_that_quietens_is_measured_quiet_after_the_wait(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_machine(monkeypatch, reference=_sequence(2.0, 2.0, 1.05))
    runs: list[int] = []
    _, cond = quiet.quietly(lambda: runs.append(1), max_wait_s=30)
    assert runs == [1] and len(clock.slept) == 2 and not cond.noisy and cond.reason == ""
    assert cond.reference_ms == 1.05 and cond.quiet_reference_ms == 1.0


def test_busy_during_the_measurement_measures_again(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # quiet before, busy after the first measurement; quiet around the second
    pin_machine(monkeypatch, reference=_sequence(1.0, 3.0, 1.0, 1.0))
    runs: list[int] = []
    _, cond = quiet.quietly(lambda: runs.append(1), max_wait_s=30)
    assert runs == [1, 1] and not cond.noisy and len(clock.slept) == 1


def test_the_quiet_reference_is_the_quietest_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quiet, "_quietest", None)
    monkeypatch.setattr(quiet, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(quiet, "reference_ms", _sequence(3.0, 2.0, 2.4))
    assert not quiet.sample().noisy  # the first reading is its own reference
    assert quiet.sample().quiet_reference_ms == 2.0
    assert quiet.sample().reason == ""  # 1.2x: within REFERENCE_SLOWDOWN
    quiet.remember_reference(1.5)  # a stored one, e.g. from the cache
    assert quiet.sample().reason == "reference kernel 1.60x its quiet time"


def test_the_real_readers_give_sane_figures() -> None:
    cores = quiet.usable_cores()
    assert cores >= 1 and 0 <= quiet.busy_cores() <= cores + 0.5
    assert 0 < quiet.reference_ms() < 10_000 and quiet.load_1m() >= 0


# --- the predictor and its cache ----------------------------------------------------------------


def _cache(out: Path) -> dict:
    return json.loads((out / CACHE_FILE).read_text())


def test_a_noisy_price_is_stored_with_its_conditions_and_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_exports(monkeypatch)
    pin_machine(monkeypatch, busy=float(quiet.usable_cores()))
    busy = LatencyPredictor("cpu-ort", ACC, K, tmp_path, duration_s=0.1, max_wait_s=0)
    noisy = busy.predict("tcn_tiny", SMALL)
    assert noisy.noisy and noisy.conditions is not None and noisy.conditions["noisy"]
    assert "cores busy" in noisy.conditions["reason"] and noisy.rss_mb and noisy.rss_mb > 0
    (key,) = [k for k in _cache(tmp_path) if k != QUIET_KEY]
    stored = _cache(tmp_path)[key]
    assert set(stored["conditions"]) == CONDITION_FIELDS and stored["noisy"] is True
    assert stored["rss_mb"] == noisy.rss_mb and stored["conditions"] == noisy.conditions
    assert list(_cache(tmp_path)[QUIET_KEY].values()) == [1.0]
    assert busy.predict("tcn_tiny", SMALL) == noisy and calls == ["tcn_tiny"]  # its own price

    pin_machine(monkeypatch)  # quiet now: a later search takes the noisy price again
    fresh = LatencyPredictor("cpu-ort", ACC, K, tmp_path, duration_s=0.1, max_wait_s=0)
    quiet_price = fresh.predict("tcn_tiny", SMALL)
    assert calls == ["tcn_tiny", "tcn_tiny"] and not quiet_price.noisy
    assert _cache(tmp_path)[key]["noisy"] is False  # replaced: the new one is quiet
    assert _cache(tmp_path)[key]["conditions"]["reason"] == ""

    pin_machine(monkeypatch, busy=float(quiet.usable_cores()))  # a quiet price is kept
    again = LatencyPredictor("cpu-ort", ACC, K, tmp_path, duration_s=0.1, max_wait_s=0)
    assert again.predict("tcn_tiny", SMALL) == quiet_price and len(calls) == 2


def test_of_two_noisy_prices_the_faster_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p50s = iter([2.0, 3.0, 1.5])

    def measured(*args: object) -> dict:
        cond = {"quiet_reference_ms": 1.0, "noisy": True}
        return {"p50_ms": next(p50s), "int8_bytes": 1, "params": 1, "rss_mb": 1.0,
                "noisy": True, "conditions": cond}  # fmt: skip

    monkeypatch.setattr(latency, "measure_here", measured)
    prices = [LatencyPredictor("cpu", ACC, K, tmp_path).predict("tcn_tiny", SMALL).p50_ms
              for _ in range(3)]  # fmt: skip
    assert prices == [2.0, 2.0, 1.5]


def _old_entry(predictor: LatencyPredictor, p50: float, source: str) -> tuple[str, dict]:
    """A cache entry as the version before conditions wrote it."""
    signature = arch_signature("tcn_tiny", resolved_args("tcn_tiny", SMALL, ACC, K))
    entry = {"signature": signature, "params": 1, "int8_bytes": 2, "p50_ms": p50,
             "source": source, "detail": "old"}  # fmt: skip
    return predictor._key(signature), entry


def test_an_old_cache_loads_its_measured_prices_are_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_exports(monkeypatch)
    pin_machine(monkeypatch)
    predictor = LatencyPredictor("cpu-ort", ACC, K, tmp_path, duration_s=0.1, max_wait_s=0)
    key, entry = _old_entry(predictor, 99.0, "local")
    (tmp_path / CACHE_FILE).write_text(json.dumps({key: entry}))
    fresh = LatencyPredictor("cpu-ort", ACC, K, tmp_path, duration_s=0.1, max_wait_s=0)
    est = fresh.predict("tcn_tiny", SMALL)
    assert calls == ["tcn_tiny"] and not est.noisy and est.conditions is not None
    assert _cache(tmp_path)[key]["conditions"] is not None and est.p50_ms != 99.0

    # a table's price carries no conditions: an old entry is used as it is
    table = tmp_path / "orin.json"
    table.write_text(json.dumps({"format": TABLE_FORMAT, "target": "jetson-orin-nano",
                                 "device": {}, "p50_ms": {}}))  # fmt: skip
    tabled = LatencyPredictor("jetson-orin-nano", ACC, K, tmp_path, table=table)
    key, entry = _old_entry(tabled, 0.5, "table")
    (tmp_path / CACHE_FILE).write_text(json.dumps({key: entry}))
    est = LatencyPredictor("jetson-orin-nano", ACC, K, tmp_path, table=table).predict(
        "tcn_tiny", SMALL)  # fmt: skip
    assert (est.p50_ms, est.noisy, est.conditions, est.rss_mb) == (0.5, False, None, None)
    assert calls == ["tcn_tiny"]


# --- measure_bundle -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real untrained tcn_tiny's int8 probe bundle per CPU target's backend."""
    out = {}
    for target in ("cpu-ort", "cpu"):
        backend = get_target(target).backend
        work = tmp_path_factory.mktemp(backend)
        exported = latency.export_candidate("tcn_tiny", SMALL, ACC, K, backend, work)
        out[backend] = latency._probe_bundle(exported, ACC, K, get_target(target),
                                             work / "probe.edgekd")  # fmt: skip
    return out


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_measure_bundle_gives_peak_memory_and_p50_from_a_fresh_process(
    backend: str, probe_bundles: dict[str, Path]
) -> None:
    m = measure_bundle(probe_bundles[backend], backend, "int8", 0.1, max_wait_s=0)
    assert m.rss_mb is not None and m.rss_over_import_mb is not None
    # the whole process holds the interpreter, numpy and the backend beside the model
    assert m.rss_mb > m.rss_over_import_mb > 0 and m.rss_mb > 20
    assert math.isfinite(m.p50_ms) and m.p50_ms > 0
    assert set(m.conditions) == CONDITION_FIELDS and m.noisy == m.conditions["noisy"]
    assert json.loads(json.dumps(m.to_dict())) == m.to_dict()


def test_measure_bundle_raises_the_runtimes_error(probe_bundles: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="no fp32 model"):
        measure_bundle(probe_bundles["onnxruntime"], "onnxruntime", "fp32", 0.1, max_wait_s=0)
