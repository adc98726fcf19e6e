"""A recording stand-in for the `tensorrt` module (TensorRT is not installed here), shared by
the runtime's builder/backend tests and the exporter's TensorRT tests."""

from __future__ import annotations

import ctypes
import json
import types
from typing import Any

import numpy as np

# the parsed network's layers: (LayerType name, whether DLA can run it)
GPU_LAYERS = [("SHUFFLE", False), ("REDUCE", False)]
DLA_LAYERS = [("CONVOLUTION", True), ("ACTIVATION", True), ("SHUFFLE", False)]
ONNX = b"ONNX model bytes"
# What TensorRT makes of a network on a DLA core: the DLA's part fused into one layer of type DLA,
# the copies into and out of its memory on the GPU. (engine layer name, LayerType)
FUSED_DLA_ENGINE = [("Reformatting CopyNode for Input Tensor 0 to input to nvm", "Reformat"),
                    ("{ForeignNode[/conv/Conv.../relu/Relu]}", "DLA"),
                    ("input finish", "FinishNvmRegion"),
                    ("Reformatting CopyNode for Output Tensor 0 from nvm", "Reformat"),
                    ("/head/Reshape", "Shuffle")]


class FakeTensorRT:
    """A stand-in for the `tensorrt` module that records every builder call (and every
    attribute set on a builder config or a runtime). Its runtime deserializes plans that start
    with b"PLAN"; the engine has the I/O tensors `io` (first one the input), a profile over
    batches profile_min..profile_max, and computes, per input row, logits = (sum, max) on host
    memory. The parsed network has `layers`; `can_run_on_DLA` answers their flag, and only once
    the config's default device is the DLA and its core is set (like TensorRT, whose answer
    depends on the configuration).

    A deserialized engine has an engine inspector (`create_engine_inspector`) whose
    `get_engine_information(LayerInformationFormat.JSON)` answers like TensorRT's: `{"Layers":
    [...], "Bindings": [...]}`, the layers as names only unless the engine was built with
    `profiling_verbosity = ProfilingVerbosity.DETAILED`, then as objects with "Name",
    "LayerType", "Inputs", "Outputs", "TacticValue", "StreamId", "Metadata" (a layer run by the
    DLA has LayerType "DLA"). The engine's layers are `engine_layers` (name, LayerType) if
    given; else one per network layer, of type DLA where the build targeted a DLA core and the
    layer can run there. An engine this stand-in did not build (a bundled one) is taken as built
    by edgekd for the DLA with detailed verbosity; each build replaces that with its config."""

    def __init__(self, *, version: str = "10.3.0", parse_ok: bool = True,
                 plan: bytes | None = b"PLAN", io: tuple[str, ...] = ("x", "y"),
                 out_dtype: str = "FLOAT", lean: bool = False, profile_max: int = 8,
                 profile_min: int = 1, layers: list[tuple[str, bool]] | None = None,
                 engine_layers: list[tuple[str, str]] | None = None) -> None:
        layers = GPU_LAYERS if layers is None else layers
        self.calls: list[tuple[Any, ...]] = []
        self.built_with = {"verbosity": "DETAILED", "dla": True}  # of the engines it loads
        rec = self
        mod = types.ModuleType("tensorrt")
        mod.__version__ = version
        mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0,
                                                                  STRONGLY_TYPED=3)
        mod.BuilderFlag = (types.SimpleNamespace(INT8="INT8", FP16="FP16", TF32="TF32",
                                                 GPU_FALLBACK="GPU_FALLBACK")
                           if int(version.split(".")[0]) < 11  # TensorRT 11 dropped weak typing
                           else types.SimpleNamespace(STRIP_PLAN="STRIP_PLAN", TF32="TF32",
                                                      GPU_FALLBACK="GPU_FALLBACK"))
        mod.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        mod.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        mod.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
        mod.ProfilingVerbosity = types.SimpleNamespace(
            LAYER_NAMES_ONLY="LAYER_NAMES_ONLY", DETAILED="DETAILED", NONE="NONE")
        mod.LayerInformationFormat = types.SimpleNamespace(ONELINE="ONELINE", JSON="JSON")

        class Logger:
            WARNING = "warning"

            def __init__(self, level: str) -> None:
                rec.calls.append(("logger", level))

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+new"

        class Profile:
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                rec.calls.append(("set_shape", name, *shapes))

        class Layer:
            def __init__(self, kind: str, dla_ok: bool) -> None:
                self.type, self.dla_ok = types.SimpleNamespace(name=kind), dla_ok

        class Network:
            num_layers = len(layers)

            def get_layer(self, i: int) -> Layer:
                return Layer(*layers[i])

        class Config:
            def __setattr__(self, name: str, value: Any) -> None:
                rec.calls.append(("config", name, value))
                object.__setattr__(self, name, value)

            def can_run_on_DLA(self, layer: Layer) -> bool:
                rec.calls.append(("can_run_on_DLA", layer.type.name))
                configured = (getattr(self, "default_device_type", None) == "DLA"
                              and getattr(self, "DLA_core", None) is not None)
                return configured and layer.dla_ok

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                rec.calls.append(("flag", flag))

            def clear_flag(self, flag: str) -> None:
                rec.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile: Profile) -> None:
                rec.calls.append(("profile",))

            def create_timing_cache(self, data: bytes) -> Cache:
                rec.calls.append(("timing_cache_in", data))
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                rec.calls.append(("set_timing_cache", ignore_mismatch))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                rec.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                rec.calls.append(("build",))
                rec.built_with = {
                    "verbosity": getattr(config, "profiling_verbosity", "LAYER_NAMES_ONLY"),
                    "dla": (getattr(config, "default_device_type", None) == "DLA"
                            and getattr(config, "DLA_core", None) is not None)}
                return plan

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse(self, model: bytes, path: str | None = None) -> bool:
                rec.calls.append(("parse", bytes(model)))
                return parse_ok

            def get_error(self, i: int) -> str:
                return "Unsupported ONNX op QLinearConv"

        class Context:
            """Like TensorRT: an unknown tensor name is refused (False), and execution fails
            unless every I/O tensor has an address."""

            def __init__(self) -> None:
                self.addr: dict[str, int] = {}
                self.shape: tuple[int, ...] = ()

            def set_tensor_address(self, name: str, address: int) -> bool:
                if name not in io:
                    return False
                self.addr[name] = address
                return True

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                if name != io[0] or not profile_min <= shape[0] <= profile_max:
                    return False
                self.shape = tuple(shape)
                return True

            def execute_async_v3(self, stream: int) -> bool:
                if set(self.addr) != set(io) or not self.shape:
                    return False
                batch, n = self.shape[0], int(np.prod(self.shape))
                x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr[io[0]]))
                out = np.ctypeslib.as_array(
                    (ctypes.c_float * (2 * batch)).from_address(self.addr[io[1]]))
                rows = x.reshape(batch, -1)
                out[:] = np.stack([rows.sum(1), rows.max(1)], axis=1).ravel()
                return True

        class Inspector:
            def __init__(self, built_with: dict[str, Any]) -> None:
                self.built_with = built_with

            def _layers(self) -> list[tuple[str, str]]:
                if engine_layers is not None:
                    return engine_layers
                return [(f"{kind.lower()}_{i}", "DLA" if self.built_with["dla"] and ok else kind)
                        for i, (kind, ok) in enumerate(layers)]

            def get_engine_information(self, fmt: str) -> str:
                rec.calls.append(("inspect", fmt))
                assert fmt == "JSON", "edgekd reads the JSON format"
                verbosity = self.built_with["verbosity"]
                if verbosity == "NONE":
                    return json.dumps({"Layers": [], "Bindings": list(io)})
                if verbosity != "DETAILED":  # LAYER_NAMES_ONLY, the default
                    return json.dumps({"Layers": [name for name, _ in self._layers()],
                                       "Bindings": list(io)})
                return json.dumps({"Layers": [
                    {"Name": name, "LayerType": kind, "Inputs": [], "Outputs": [],
                     "TacticValue": "0x0000000000000000", "StreamId": 0, "Metadata": ""}
                    for name, kind in self._layers()], "Bindings": list(io)})

        class Engine:
            num_io_tensors = len(io)

            def __init__(self) -> None:
                self.built_with = dict(rec.built_with)

            def create_engine_inspector(self) -> Inspector:
                return Inspector(self.built_with)

            def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
                return [(profile_min, 3, 128), (profile_min, 3, 128), (profile_max, 3, 128)]

            def get_tensor_name(self, i: int) -> str:
                return io[i]

            def get_tensor_mode(self, name: str) -> str:
                return "INPUT" if name == io[0] else "OUTPUT"

            def get_tensor_dtype(self, name: str) -> str:
                return out_dtype if name == io[-1] else "FLOAT"

            def create_execution_context(self) -> Context:
                return Context()

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def __setattr__(self, name: str, value: Any) -> None:
                rec.calls.append(("runtime", name, value))

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                rec.calls.append(("deserialize", bytes(data)))
                return Engine() if bytes(data).startswith(b"PLAN") else None

        mod.Logger, mod.Runtime = Logger, Runtime
        if not lean:
            mod.Builder, mod.OnnxParser = Builder, OnnxParser
        self.module = mod

    def flags(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "flag"]
