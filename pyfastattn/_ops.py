"""Registering the custom ops, and calling them in eager mode without torch's dispatch cost.

Every op is a `torch.library.custom_op` with a fake impl and (for forward ops) autograd, so
torch.compile, fake tensors, opcheck and every other tracer see one opaque op. Going through
that machinery costs ~35 us of Python per call (dispatcher -> autograd_impl -> redispatch ->
backend_impl -> aliasing check), more than a small kernel on a GPU.

So `define` returns a caller with an eager fast path: when nothing could observe the
difference (not compiling, no torch function/dispatch mode, no functorch transform, no
forward-mode AD, only plain tensors), it runs the very impl the op would run: directly when
no gradient is needed, else through an autograd.Function built from the same setup_context
and backward that `register_autograd` gets (as torch's generated one is). Otherwise, and
always under torch.compile, it calls the registered op, so graphs still contain the op.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.autograd.forward_ad as _fwd_ad

_C = torch._C
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(args) -> bool:
    """True when calling the impl directly is indistinguishable from calling the op."""
    if (_C._len_torch_dispatch_stack() or _C._is_torch_function_mode_enabled()
            or _C._are_functorch_transforms_active() or _fwd_ad._current_level >= 0):
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and type(a) not in _PLAIN:  # subclasses (FakeTensor, DTensor, ...)
            return False
    return True


def define(name: str, impl: Callable, fake: Callable, *, backward: Optional[Callable] = None,
           setup_context: Optional[Callable] = None) -> Callable:
    """Registers `pyfastattn::<name>` and returns the function the wrappers call it through.

    Call it with positional arguments only (all ops here take them in schema order).
    """
    opdef = torch.library.custom_op(f"pyfastattn::{name}", impl, mutates_args=())
    opdef.register_fake(fake)
    function = None
    if backward is not None:
        opdef.register_autograd(backward, setup_context=setup_context)
        function = _autograd_function(name, impl, backward, setup_context)
    overload = getattr(torch.ops.pyfastattn, name).default

    def call(*args):
        # is_compiling() first: dynamo folds it to True and never traces the rest.
        if not torch.compiler.is_compiling() and _plain_eager(args):
            if not (_C.is_grad_enabled() and _C._any_requires_grad(*args)):
                return impl(*args)
            if function is not None:
                return function.apply(*args)
        return overload(*args)  # also gives torch's error for backward ops that need a gradient

    call.__name__ = call.__qualname__ = name
    call.__doc__ = impl.__doc__
    return call


def _autograd_function(name: str, impl: Callable, backward: Callable, setup_context: Callable):
    """The eager twin of the autograd.Function that register_autograd generates."""

    def forward(ctx, *args):
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    return type(f"{name}_eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})
