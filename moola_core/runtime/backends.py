"""Inference backends the runtime can serve a model with. Standard library and torch only.

Each backend turns a loaded eval-mode model into `predict(x [1, T, F], valid [1, T]) -> dict`
with the model's predict outputs ({"label", "start", "end", "class_probs"}). The runtime
tries each on the host, keeps those whose outputs match the golden outputs, and serves the
fastest (see check.py). The network (`forward`) is what a backend accelerates; decoding stays
the model's own eager `decode`, which for the CRF head holds Python control flow a trace
would silently freeze.

- eager        the model as written (always available, the reference).
- torchscript  `forward` traced and frozen: fewer Python dispatches per call on CPU and GPU.
- cuda_graph   `forward` captured once as a CUDA graph and replayed: one launch instead of
               dozens, which is what keeps a small BiLSTM under 1 ms on a GPU. CUDA only;
               fixed input shape (one window).

ONNX Runtime is deliberately not a backend: hosts have only Python and torch (see
docs/runtime.md for the measurement and the reasoning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

BACKEND_NAMES = ("eager", "torchscript", "cuda_graph")


class BackendUnavailable(Exception):
    """This backend cannot run here (e.g. cuda_graph on a CPU host, or tracing failed)."""


def make_backend(name: str, model, device, example_x, example_valid) -> Callable:
    """Build backend `name` for `model` (eval mode, on `device`) from one example window.

    `example_x` float [1, T, F] and `example_valid` bool [1, T] are on `device`. Raises
    BackendUnavailable with the reason when the backend does not work on this host.
    """
    builders = {"eager": _eager, "torchscript": _torchscript, "cuda_graph": _cuda_graph}
    if name not in builders:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    try:
        return builders[name](model, device, example_x, example_valid)
    except BackendUnavailable:
        raise
    except Exception as exc:  # any failure to build just takes the backend off the list
        raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None


def _eager(model, device, example_x, example_valid):
    import torch

    def predict(x, valid):
        with torch.inference_mode():
            return model.predict(x, valid)

    return predict


def _torchscript(model, device, example_x, example_valid):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in favour of torch.compile, which needs a compiler toolchain
        # on the host; the trace itself is checked by golden parity before it is ever used.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example_x, example_valid), strict=False)
        frozen = torch.jit.freeze(traced.eval())
        for _ in range(2):  # the profiling executor specialises on the first calls
            frozen(example_x, example_valid)

    def predict(x, valid):
        with torch.inference_mode():
            return model.decode(frozen(x, valid), valid)

    return predict


def _cuda_graph(model, device, example_x, example_valid):
    import torch

    if device.type != "cuda":
        raise BackendUnavailable("needs a CUDA device")
    static_x = example_x.clone()
    static_valid = example_valid.clone()
    with torch.inference_mode():
        # warm up on a side stream (cuDNN picks its algorithms) before capturing, as the
        # CUDA graphs notes in the PyTorch docs require
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                model(static_x, static_valid)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_x, static_valid)

    def predict(x, valid):
        if x.shape != static_x.shape:
            raise ValueError(
                f"cuda_graph serves shape {tuple(static_x.shape)}, got {tuple(x.shape)}"
            )
        with torch.inference_mode():
            static_x.copy_(x)
            static_valid.copy_(valid)
            graph.replay()
            # decode reads the static outputs and returns fresh tensors before the next replay
            return model.decode(static_out, static_valid)

    return predict
