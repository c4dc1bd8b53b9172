"""The parameter sets the benchmarks step: named lists of shapes, at two scales.

A workload is only shapes and a dtype; :meth:`Workload.tensors` makes seeded random tensors
for it. Every workload has a ``full`` scale (what the report times by default) and a
``small`` one (the same structure, shrunk so a run takes seconds: used by the tests).

>>> gpt2 = get_workload("gpt2")
>>> len(gpt2.shapes), gpt2.numel
(148, 124439808)
>>> resnet = get_workload("resnet50")
>>> len(resnet.shapes), resnet.numel
(161, 25557032)
>>> get_workload("many-small", "small").numel
16000
"""

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

SCALES = ("full", "small")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return sum(prod(shape) for shape in self.shapes)

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def tensors(self, seed: int, device: torch.device | str = "cpu") -> list[Tensor]:
        """One standard-normal tensor per shape, the same for the same seed."""
        generator = torch.Generator().manual_seed(seed)
        # drawn on the CPU, where a generator gives the same numbers on every machine
        return [torch.randn(shape, generator=generator, dtype=self.dtype).to(device) for shape in self.shapes]


def gpt2_shapes(n_embd: int = 768, n_layer: int = 12, vocab: int = 50257, n_ctx: int = 1024):
    """The parameter shapes of GPT-2 in Hugging Face's naming and order (Conv1D weights are in x out)."""
    shapes = [(vocab, n_embd), (n_ctx, n_embd)]                        # wte, wpe
    for _ in range(n_layer):
        shapes += [(n_embd,), (n_embd,)]                                 # ln_1 weight, bias
        shapes += [(n_embd, 3 * n_embd), (3 * n_embd,)]                  # attn.c_attn
        shapes += [(n_embd, n_embd), (n_embd,)]                          # attn.c_proj
        shapes += [(n_embd,), (n_embd,)]                                 # ln_2 weight, bias
        shapes += [(n_embd, 4 * n_embd), (4 * n_embd,)]                  # mlp.c_fc
        shapes += [(4 * n_embd, n_embd), (n_embd,)]                      # mlp.c_proj
    shapes += [(n_embd,), (n_embd,)]                                     # ln_f weight, bias
    return tuple(shapes)


def _gpt2(scale: str) -> Workload:
    if scale == "small":  # 1/16 of every width and of the vocabulary; the same 148 tensors
        return Workload("gpt2", "GPT-2 small at 1/16 width (148 tensors)",
                        gpt2_shapes(n_embd=48, vocab=50257 // 16, n_ctx=1024 // 16))
    return Workload("gpt2", "GPT-2 small, 124M params (148 tensors)", gpt2_shapes())


def resnet50_shapes(width: int = 64, classes: int = 1000):
    """The parameter shapes of torchvision's ResNet-50, in its order (conv weights are out x in x kh x kw)."""
    shapes = [(width, 3, 7, 7), (width,), (width,)]                     # conv1, bn1
    inplanes = width
    for planes, blocks in zip((width, 2 * width, 4 * width, 8 * width), (3, 4, 6, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]    # conv1, bn1
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]      # conv2, bn2
            shapes += [(4 * planes, planes, 1, 1), (4 * planes,), (4 * planes,)]  # conv3, bn3
            if block == 0:                                                # downsample conv, bn
                shapes += [(4 * planes, inplanes, 1, 1), (4 * planes,), (4 * planes,)]
            inplanes = 4 * planes
    shapes += [(classes, inplanes), (classes,)]                          # fc
    return tuple(shapes)


def _resnet50(scale: str) -> Workload:
    if scale == "small":  # 1/8 of every width and 1/8 of the classes; the same 161 tensors
        return Workload("resnet50", "ResNet-50 at 1/8 width (161 tensors)", resnet50_shapes(width=8, classes=125))
    return Workload("resnet50", "ResNet-50, 25.6M params (161 tensors)", resnet50_shapes())


def _many_small(scale: str) -> Workload:
    # per-tensor overhead is the point: the small scale keeps hundreds of tensors
    count, size = (250, 64) if scale == "small" else (1000, 1000)
    return Workload("many-small", f"{count} tensors of {size} elements", ((size,),) * count)


def _few_large(scale: str) -> Workload:
    size = 2**16 if scale == "small" else 2**24
    return Workload("few-large", f"4 tensors of {size:,} elements", ((size,),) * 4)


WORKLOADS: dict[str, Callable[[str], Workload]] = {
    "gpt2": _gpt2,
    "resnet50": _resnet50,
    "many-small": _many_small,
    "few-large": _few_large,
}


def get_workload(name: str, scale: str = "full") -> Workload:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    return WORKLOADS[name](scale)
