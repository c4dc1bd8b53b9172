"""Adam and AdamW, drop-ins for torch.optim.Adam and torch.optim.AdamW."""

from typing import ClassVar

import torch
from torch import Tensor

from optkernels import adam_update
from optkernels._validation import UnsupportedOptionError, check_flag
from optkernels.quantization import (MIN_QUANTIZED_NUMEL, check_state_precision, converted_state, load_state,
                                     new_state, num_blocks)

from .base import KernelOptimizer


def _check_tensor_hparams(lr, betas, foreach) -> None:
    # torch.optim.Adam's construction rules for tensor hyperparameters, kept so the same
    # configurations fail the same way (our kernels would take them).
    if isinstance(lr, Tensor) and foreach:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    if isinstance(betas, (tuple, list)) and len(betas) == 2:
        if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
            raise ValueError("betas must be either both floats or both Tensors")
        if isinstance(betas[0], Tensor) and foreach:
            raise ValueError("betas[0] as a Tensor is not supported for capturable=False and foreach=True")


class LowPrecisionMoments:
    """Adam-family moments in low precision, for a :class:`~wrappers.base.KernelOptimizer` whose
    kernel takes ``state_precision`` (Adam, AdamW, RAdam, NAdam, AdaBelief). The class names its
    two moments in ``moments`` (Adam's ``exp_avg``, ``exp_avg_sq``; AdaBelief's ``exp_avg``,
    ``exp_avg_var``); each moment ``name`` has its scales under ``name + "_scale"``, which the
    kernel takes as ``name + "_scales"``. Options of the optimizer, keyword-only, not of a param
    group (like ``flat``):

    - ``state_precision="fp32"`` (default; torch.optim's state), ``"bf16"`` (moments in bfloat16,
      written with stochastic rounding) or ``"8bit"`` (moments of params with at least 4096
      elements as 8-bit blockwise codes; see :mod:`optkernels.quantization`). State keys:
      ``step``, the moments (float tensors, or ``torch.uint8`` codes in ``"8bit"``) and, in
      ``"8bit"`` only, their scales (``exp_avg_scale``, ``exp_avg_sq_scale``: float32, one per
      block of 256 elements; 0 elements where the moments are not quantised).
    - ``stochastic_rounding=True``: bf16 params get their update rounded stochastically (the
      moments of bf16 params are then float32 in ``"fp32"``); ``seed``: its seed.

    ``load_state_dict`` converts the moments to this optimizer's precision, so a checkpoint of
    any precision (torch.optim's included) loads, and a low-precision checkpoint loads into an
    fp32 optimizer (dequantised). Not with AMSGrad or ``flat=True``; ``compiled=True`` runs the
    native CPU kernel (see :mod:`optkernels._native`).
    """

    moments: ClassVar[dict[str, bool]] = {"exp_avg": True, "exp_avg_sq": False}  # name: signed (v_t is not)

    @classmethod
    def _scale_names(cls) -> dict[str, str]:
        return {name: f"{name}_scale" for name in cls.moments}

    def _set_low_precision(self, state_precision, stochastic_rounding, seed, *, flat: bool, amsgrad: bool = False):
        self.state_precision = check_state_precision(state_precision)
        self.stochastic_rounding = check_flag("stochastic_rounding", stochastic_rounding)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise TypeError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        if self._low_precision and flat:
            raise UnsupportedOptionError("flat=True is not supported with state_precision other than 'fp32' or "
                                         "stochastic_rounding=True yet; use the list path (compiled=True works)")
        if self._low_precision and amsgrad:
            raise UnsupportedOptionError("amsgrad=True is not supported with state_precision other than 'fp32' "
                                         "or stochastic_rounding=True")

    def _low_precision_options(self, state) -> dict:
        """The kernel's low-precision keywords (none in fp32: the kernel's torch.optim path)."""
        if not self._low_precision:
            return {}
        return dict(state_precision=self.state_precision, stochastic_rounding=self.stochastic_rounding,
                    seed=self.seed, **{f"{key}s": state.get(key) for key in self._scale_names().values()})

    @property
    def _low_precision(self) -> bool:
        return getattr(self, "state_precision", "fp32") != "fp32" or getattr(self, "stochastic_rounding", False)

    def _state_names(self, group):
        names = super()._state_names(group)
        if getattr(self, "state_precision", "fp32") == "8bit":
            names += tuple(self._scale_names().values())
        return names

    def _kernel_checked_state_names(self, group):
        return (*self.moments, *self._scale_names().values()) if self._low_precision else ()

    def _init_state(self, name, param, group):
        if not self._low_precision:
            return super()._init_state(name, param, group)
        if name in self.moments:
            return new_state(param, self.state_precision, stochastic_rounding=self.stochastic_rounding)
        if name in self._scale_names().values():
            count = num_blocks(param.numel()) if param.numel() >= MIN_QUANTIZED_NUMEL else 0
            return torch.zeros(count, dtype=torch.float32, device=param.device)
        return super()._init_state(name, param, group)  # other state (NAdam's mu_product)

    def __getstate__(self):
        return {**super().__getstate__(), "state_precision": self.state_precision,
                "stochastic_rounding": self.stochastic_rounding, "seed": self.seed}

    def __setstate__(self, state):
        # load_state_dict comes here too, without these: the optimizer's own stay
        for name, default in (("state_precision", "fp32"), ("stochastic_rounding", False), ("seed", 0)):
            setattr(self, name, state.pop(name, getattr(self, name, default)))
        super().__setstate__(state)

    def load_state_dict(self, state_dict):
        """torch.optim's, then each param's moments converted to this optimizer's precision from
        the checkpoint's own tensors: codes dequantised, values quantised or cast (to nearest).
        torch casts floating-point state to the param's dtype on load, which would round float32
        scales of bf16 params; the conversion reads the checkpoint's tensors instead."""
        saved = state_dict["state"]
        ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        super().load_state_dict(state_dict)
        params = [param for group in self.param_groups for param in group["params"]]
        group_of = {id(param): group for group in self.param_groups for param in group["params"]}
        for index, param in zip(ids, params):
            raw = saved.get(index)
            if raw is None or not self._needs_conversion(raw, param):
                continue
            param_state = self.state[param]
            for name, signed in self.moments.items():
                if name not in raw:
                    continue
                scale_name = self._scale_names()[name]
                scales = raw.get(scale_name)
                values = load_state(raw[name].to(param.device), None if scales is None else scales.to(param.device),
                                    signed=signed)
                like = (self._init_state(name, param, group_of[id(param)]) if self._low_precision
                        else torch.zeros_like(param, memory_format=torch.preserve_format))
                param_state[name], new = converted_state(values, like, signed=signed)
                if self.state_precision == "8bit":
                    param_state[scale_name] = new
                else:
                    param_state.pop(scale_name, None)

    def _needs_conversion(self, raw, param) -> bool:
        if self._low_precision or any(name in raw for name in self._scale_names().values()):
            return True
        return any(name in raw and raw[name].dtype == torch.uint8 for name in self.moments)




class Adam(LowPrecisionMoments, KernelOptimizer):
    """Adam (and AMSGrad, and AdamW with ``decoupled_weight_decay=True``); see :func:`adam_update`.
    ``state_precision``, ``stochastic_rounding``, ``seed``: see :class:`LowPrecisionMoments`."""

    state_names = ("exp_avg", "exp_avg_sq")
    amsgrad_state_name = "max_exp_avg_sq"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, flat=False, compiled=False, state_precision="fp32",
                 stochastic_rounding=False, seed=0):
        _check_tensor_hparams(lr, betas, foreach)
        self._set_low_precision(state_precision, stochastic_rounding, seed, flat=flat, amsgrad=amsgrad)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, flat=flat, compiled=compiled)

    def _update(self, group, params, grads, state, step):
        adam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                    step=step, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                    eps=group["eps"], compiled=self.compiled, **self._preparation(group),
                    **self._low_precision_options(state))


class AdamW(Adam):
    """Adam with decoupled weight decay; torch.optim.AdamW's signature and defaults."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 flat=False, compiled=False, state_precision="fp32", stochastic_rounding=False, seed=0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         flat=flat, compiled=compiled, state_precision=state_precision,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True
