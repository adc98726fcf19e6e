"""`load`: check a bundle and compile it on a backend into a `Model`.

The top of the runtime: it reads the bundle (`bundle`, with its digest, signature, version and
rollback checks), opens a backend (`backends`), and for `precision="auto"` lets `autoselect`
measure the candidates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from edgekd.errors import BackendUnavailable, BundleError, ConfigError
from edgekd.modalities import ModalitySpec
from edgekd.runtime.backends import BACKENDS, Engine, backend_module, pick_precision
from edgekd.runtime.backends import cache_dir as default_cache_dir
from edgekd.runtime.bundle import (
    MANIFEST,
    PRECISIONS,
    Bundle,
    check_min_version,
    read_bundle_once,
    retry_if_replaced,
)
from edgekd.runtime.model import Model
from edgekd.runtime.signature import resolve_trusted_keys


def _check_model_sections(bundle: Bundle) -> ModalitySpec:
    """The bundle's modality spec, and its labels agree with the model output (BundleError)."""
    try:
        spec = ModalitySpec.from_dict(bundle.modality)
    except ConfigError as exc:
        raise BundleError(f"{bundle.root}: bad modality section: {exc}") from exc
    out_shape = bundle.manifest["io"]["output"]["shape"]
    if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != len(bundle.labels):
        raise BundleError(f"{bundle.root}: the model outputs {out_shape[-1]} classes but the "
                          f"manifest lists {len(bundle.labels)} labels")
    return spec


def _open_engine(name: str, bundle: Bundle, precision: str | None, threads: int | None,
                 cache: Path) -> Engine:
    """Compile `bundle` on backend `name`; BackendUnavailable if it is missing or has no
    artifact of the wanted precision."""
    module = backend_module(name)
    module.check_available()
    offered = module.precisions(bundle)
    chosen = pick_precision(offered, precision, bundle.target)
    if chosen is None:
        raise BackendUnavailable(f"{name} has no {precision or 'usable'} model in {bundle.root} "
                                 f"(it offers: {', '.join(offered) or 'nothing'})")
    return module.open(bundle, chosen, threads=threads, cache_dir=cache)


def _read(bundle: str | Path | Bundle, trusted_keys: Sequence[str | Path] | None,
          min_version: int | None, allow_rollback: bool, cache: Path) -> Bundle:
    """The bundle, digest-checked (and signature-, version- and rollback-checked when they
    apply); files unhashed. A Bundle already read under the same trust is used as it is."""
    keys = resolve_trusted_keys(trusted_keys)
    if isinstance(bundle, Bundle) and (bundle.signer is not None or not keys):
        check_min_version(bundle.version, min_version, bundle.root / MANIFEST)
        return bundle
    root = bundle.root if isinstance(bundle, Bundle) else bundle
    # one attempt: `load` retries the read and the compile together after a publish
    return read_bundle_once(root, verify=False, trusted_keys=keys, min_version=min_version,
                            allow_rollback=allow_rollback, cache_dir=cache)


def load(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    trusted_keys: Sequence[str | Path] | None = None,
    min_version: int | None = None,
    allow_rollback: bool = False,
) -> Model:
    """Check the bundle and compile it on a backend.

    Checks, before anything is compiled: the manifest digest, the signature when trusted keys
    apply, the schema, the version, and the size and sha256 of golden.npz and of each file the
    backend loads (not every artifact: the others are never read). Each file is read once and
    the checked bytes are what the backend compiles. A publish replacing the bundle folder
    during the load makes it start again from the new bundle.
    backend: "auto" (TensorRT if a CUDA GPU and TensorRT are present, else OpenVINO, else ONNX
    Runtime) or one of "tensorrt", "openvino", "onnxruntime".
    precision: None = the manifest target's precision if this backend has it, else the best
    available (int8 > fp16 > fp32); "fp32", "fp16", "bf16", "int8"; or "auto": the fastest
    artifact here within the export's accuracy budget, measured once per bundle and device
    and cached (see `edgekd.runtime.autoselect`).
    threads: CPU inference threads (default 1: lowest, steadiest streaming latency).
    cache_dir: compiled engines, sealed OpenVINO blobs and the rollback record (default
    $EDGEKD_CACHE or XDG cache).
    trusted_keys: Ed25519 public key files (PEM); a bundle not signed by one of them is refused.
    None = $EDGEKD_TRUSTED_KEYS (path list); [] = no signature required.
    min_version: refuse a bundle whose manifest `version` is lower (or that has none).
    allow_rollback: load a signed bundle older than the newest one of its signer read on this
    device (refused by default; see `edgekd.runtime.rollback.check_rollback`): turns the
    rollback guard off, which also refuses a signed bundle where the cache has no usable seal
    key to keep its record.
    Raises BundleError, BackendUnavailable (with the package to install) or ConfigError.
    """
    t0 = time.perf_counter()
    if precision is not None and precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose auto or one of "
                          f"{', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if backend != "auto":
        backend_module(backend)  # ConfigError for an unknown name before any file is read
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def attempt(n: int) -> Model:
        source = bundle.root if n and isinstance(bundle, Bundle) else bundle
        b = _read(source, trusted_keys, min_version, allow_rollback, cache)
        with b.folder.replacement_check():
            return _compile(b, backend, precision, threads, cache, t0)

    return retry_if_replaced(attempt)


def _compile(b: Bundle, backend: str, precision: str | None, threads: int | None, cache: Path,
             t0: float) -> Model:
    spec = _check_model_sections(b)
    b.read_data("golden")  # checks golden.npz now: self_check and auto timing use these bytes
    if precision == "auto":
        # Imported on first use, not with the runtime: its device stamp needs importlib.metadata
        # and the CUDA probe, tens of milliseconds that a plain load need not pay.
        from edgekd.runtime.autoselect import choose

        def open_one(name: str, prec: str) -> Engine:
            return _open_engine(name, b, prec, threads, cache)

        engine, selection = choose(b, backend, threads, cache, open_one)
        return Model(b, engine, spec, time.perf_counter() - t0, selection)
    from edgekd.runtime.probe import driver_library_present

    names = BACKENDS if backend == "auto" else (backend,)
    reasons = []
    for name in names:
        if backend == "auto" and name == "tensorrt" and not driver_library_present():
            reasons.append(f"{name}: no CUDA driver library")  # no probe subprocess needed
            continue
        try:
            engine = _open_engine(name, b, precision, threads, cache)
        except BackendUnavailable as exc:
            if backend != "auto":
                raise
            reasons.append(f"{name}: {exc}")
            continue
        return Model(b, engine, spec, time.perf_counter() - t0)
    raise BackendUnavailable("no backend can run this bundle: " + "; ".join(reasons))
