"""A CuPy stand-in on the CPU: device arrays that cross into NumPy only where CuPy lets them.

The simulator's CuPy path cannot run in CI (no GPU), and an ndarray subclass would not guard it: NumPy never calls
a subclass's ``__array__`` for ``np.asarray``, ufuncs or h5py writes, so a NumPy-only call on a device array would
pass here and crash on a GPU. ``DeviceArray`` wraps a NumPy array instead and follows CuPy 13/14 at the boundary:

- ``np.asarray(x)``, ``np.array(x)``, h5py writes, anything that calls ``__array__``: TypeError, as CuPy raises
  ("Implicit conversion to a NumPy array is not allowed"); ``x.get()`` and ``asnumpy(x)`` copy to the host.
- NumPy ufuncs and functions on device arrays (``__array_ufunc__``, ``__array_function__``) run when CuPy has a
  function of that name, and fail with TypeError when a host ``numpy.ndarray`` is mixed in (CuPy: "Unsupported
  type"); NumPy and Python scalars mix freely; indexing with host integer or boolean arrays is allowed (CuPy
  copies them over).
- Integer indexing returns 0-d device arrays, not scalars; ``float()``, ``int()``, ``bool()`` of a size-1 array
  synchronise and return a Python number.
- The module exports only the names that CuPy 13.6.0 and 14.0.1 both export (``dir(cupy)``; device arrays only
  the methods both versions' ``cupy.ndarray`` has), so a name one of them lacks fails here too.

Arithmetic is NumPy's, so results are bit-identical to NumPy: a test comparing the two checks only the path, not
the GPU's own rounding (sin, exp differ between CUDA and glibc in the last bits).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

# dir(cupy) of cupy-cuda12x 13.6.0 and 14.0.1 (installed without a GPU), names both export
COMMON_NAMES = frozenset("""
    AxisError ComplexWarning DataSource ElementwiseKernel Inf Infinity ModuleDeprecationWarning NAN NINF NZERO
    NaN PINF PZERO RankWarning RawKernel RawModule ReductionKernel TooHardError VisibleDeprecationWarning abs
    absolute add all allclose alltrue amax amin angle any append apply_along_axis arange arccos arccosh arcsin
    arcsinh arctan arctan2 arctanh argmax argmin argpartition argsort argwhere around array array2string
    array_equal array_equiv array_repr array_split array_str asanyarray asarray asarray_chkfinite
    ascontiguousarray asfarray asfortranarray asnumpy atleast_1d atleast_2d atleast_3d average bartlett
    base_repr binary_repr bincount bitwise_and bitwise_not bitwise_or bitwise_xor blackman bool_ broadcast
    broadcast_arrays broadcast_shapes broadcast_to byte byte_bounds c_ can_cast cbrt cdouble ceil cfloat choose
    clear_memo clip column_stack common_type complex128 complex64 complex_ complexfloating compress concatenate
    conj conjugate convolve copy copysign copyto corrcoef correlate cos cosh count_nonzero cov cross csingle
    cuda cumprod cumproduct cumsum deg2rad degrees delete diag diag_indices diag_indices_from diagflat diagonal
    diff digitize disable_experimental_feature_warning disp divide divmod dot double dsplit dstack dtype e
    ediff1d einsum empty empty_like equal euler_gamma exceptions exp exp2 expand_dims expm1 extract eye fabs fft
    fill_diagonal find_common_type finfo fix flatiter flatnonzero flip fliplr flipud float16 float32 float64
    float_ float_power floating floor floor_divide fmax fmin fmod format_float_positional
    format_float_scientific format_parser frexp fromDlpack from_dlpack frombuffer fromfile fromfunction fromiter
    fromstring full full_like fuse gcd generic genfromtxt get_array_module get_array_wrap
    get_default_memory_pool get_default_pinned_memory_pool get_printoptions gradient greater greater_equal half
    hamming hanning heaviside histogram histogram2d histogramdd hsplit hstack hypot i0 identity iinfo imag in1d
    index_exp indices inexact inf infty inner int16 int32 int64 int8 int_ intc integer interp intersect1d intp
    invert is_available isclose iscomplex iscomplexobj isfinite isfortran isin isinf isnan isneginf isposinf
    isreal isrealobj isscalar issctype issubclass_ issubdtype issubsctype iterable ix_ kaiser kron lcm ldexp
    left_shift less less_equal lexsort lib linalg linspace load loadtxt log log10 log1p log2 logaddexp
    logaddexp2 logical_and logical_not logical_or logical_xor logspace longlong mask_indices matmul max maximum
    may_share_memory mean median memoize meshgrid mgrid min min_scalar_type minimum mintypecode mod modf
    moveaxis msort multiply nan nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax nanmean nanmedian
    nanmin nanprod nanstd nansum nanvar ndarray ndim ndindex negative newaxis nextafter nonzero not_equal number
    obj2sctype ogrid ones ones_like outer packbits pad partition percentile pi piecewise place poly poly1d
    polyadd polyfit polymul polynomial polysub polyval positive power printoptions prod product promote_types
    ptp put putmask quantile r_ rad2deg radians random ravel ravel_multi_index real real_if_close reciprocal
    remainder repeat require reshape resize result_type right_shift rint roll rollaxis roots rot90 round round_
    row_stack s_ safe_eval save savetxt savez savez_compressed sctype2char searchsorted select set_printoptions
    set_string_function setdiff1d setxor1d shape shares_memory short show_config sign signbit signedinteger sin
    sinc single singlecomplex sinh size sometrue sort sort_complex split sqrt square squeeze stack std subtract
    sum swapaxes take take_along_axis tan tanh tensordot testing tile trace transpose trapz tri tril
    tril_indices tril_indices_from trim_zeros triu triu_indices triu_indices_from true_divide trunc typename
    typing ubyte ufunc uint uint16 uint32 uint64 uint8 uintc uintp ulonglong union1d unique unpackbits
    unravel_index unsignedinteger unwrap ushort vander var vdot vectorize vsplit vstack where who zeros
    zeros_like
""".split())
# dir(cupy.ndarray) of both versions, public names and the conversion protocol
COMMON_METHODS = frozenset("""
    T __array__ __array_function__ __array_ufunc__ __bool__ __complex__ __float__ __getitem__ __int__ __iter__
    __len__ __setitem__ all any argmax argmin argpartition argsort astype base choose clip compress conj
    conjugate copy cstruct cumprod cumsum data device diagonal dot dtype dump dumps fill flags flat flatten get
    imag item itemsize max mean min nbytes ndim nonzero partition prod ptp put ravel real reduced_view repeat
    reshape round scatter_add scatter_max scatter_min searchsorted set shape size sort squeeze std strides sum
    swapaxes take toDlpack tobytes tofile tolist trace transpose var view
""".split())
LINALG_NAMES = frozenset("cholesky det eigh eigvalsh inv lstsq matrix_power matrix_rank norm pinv qr slogdet solve "
                         "svd tensorinv tensorsolve".split())
_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
             "explicitly.")
# Functions that take host data and put it on the device (CuPy: a host-to-device copy).
_TO_DEVICE = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray"})


def _unwrap(obj: Any, where: str) -> Any:
    """Device arrays to their NumPy storage; a host ndarray is refused as CuPy refuses it."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise TypeError(f"Unsupported type {type(obj)} in {where}: a host numpy.ndarray mixed with device arrays "
                        "(CuPy refuses it; copy it with xp.asarray first)")
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, where) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, where) for k, v in obj.items()}
    return obj


def _unwrap_index(key: Any) -> Any:
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_unwrap_index(k) for k in key)
    return key  # ints, slices, None, Ellipsis, host index arrays (CuPy copies those over)


def _wrap(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return DeviceArray(obj)
    if isinstance(obj, np.generic):  # CuPy reductions and indexing give 0-d device arrays
        return DeviceArray(np.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


class DeviceArray:
    """An array "on the device": NumPy storage behind CuPy's boundary rules (see the module's docstring)."""

    __slots__ = ("_a",)

    def __init__(self, array: np.ndarray) -> None:
        self._a = array

    # -- crossing to the host: explicit only
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def get(self, stream=None, order="C", out=None) -> np.ndarray:
        return np.array(self._a, order=order)

    def set(self, arr: np.ndarray, stream=None) -> None:
        self._a[...] = arr

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) if isinstance(row, np.ndarray) else DeviceArray(np.asarray(row)) for row in self._a)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    # -- protocols NumPy calls
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ not in COMMON_NAMES:
            return NotImplemented
        args = _unwrap(inputs, f"numpy.{ufunc.__name__}")
        kw = _unwrap(kwargs, f"numpy.{ufunc.__name__}")
        if "out" in kw:
            kw["out"] = tuple(kw["out"]) if isinstance(kw["out"], tuple) else kw["out"]
        result = getattr(ufunc, method)(*args, **kw)
        if "out" in kwargs:
            out = kwargs["out"]
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        module = func.__module__ or ""
        allowed = LINALG_NAMES if module.endswith("linalg") else COMMON_NAMES
        if func.__name__ not in allowed or func.__name__ in _TO_DEVICE:
            return NotImplemented
        return _wrap(func(*_unwrap(args, f"numpy.{func.__name__}"), **_unwrap(kwargs, f"numpy.{func.__name__}")))

    # -- indexing
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, DeviceArray):
            value = value._a
        self._a[_unwrap_index(key)] = value  # CuPy also takes host values here (a copy to the device)

    # -- attributes and methods that both CuPy versions have
    def __getattr__(self, name):
        if name not in COMMON_METHODS:
            raise AttributeError(f"cupy.ndarray has no attribute {name!r} in CuPy 13 and 14 (stand-in)")
        value = getattr(self._a, name)
        if not callable(value):
            return _wrap(value) if name in ("T", "real", "imag") else value

        def method(*args, **kwargs):
            return _wrap(value(*_unwrap(args, f"ndarray.{name}"), **_unwrap(kwargs, f"ndarray.{name}")))

        return method


def _operator(ufunc, reflected=False, inplace=False):
    def op(self, other):
        if isinstance(other, np.ndarray) and not isinstance(other, DeviceArray):
            raise TypeError(f"Unsupported type {type(other)}: host numpy.ndarray in an operation with a device array")
        o = other._a if isinstance(other, DeviceArray) else other
        if inplace:
            ufunc(self._a, o, out=self._a)
            return self
        return _wrap(ufunc(o, self._a) if reflected else ufunc(self._a, o))

    return op


for _name, _ufunc in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                      ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power), ("and", np.bitwise_and),
                      ("or", np.bitwise_or), ("xor", np.bitwise_xor), ("matmul", np.matmul),
                      ("lshift", np.left_shift), ("rshift", np.right_shift)):
    setattr(DeviceArray, f"__{_name}__", _operator(_ufunc))
    setattr(DeviceArray, f"__r{_name}__", _operator(_ufunc, reflected=True))
    setattr(DeviceArray, f"__i{_name}__", _operator(_ufunc, inplace=True))
for _name, _ufunc in (("lt", np.less), ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
                      ("eq", np.equal), ("ne", np.not_equal)):
    setattr(DeviceArray, f"__{_name}__", _operator(_ufunc))
for _name, _ufunc in (("neg", np.negative), ("pos", np.positive), ("abs", np.absolute), ("invert", np.invert)):
    setattr(DeviceArray, f"__{_name}__", lambda self, _u=_ufunc: DeviceArray(_u(self._a)))
DeviceArray.__hash__ = None  # type: ignore[assignment]


def _function(name: str, func):
    to_device = name in _TO_DEVICE

    def call(*args, **kwargs):
        if to_device:
            args = tuple(a._a if isinstance(a, DeviceArray) else a for a in args)
            return DeviceArray(np.array(func(*args, **kwargs)))
        return _wrap(func(*_unwrap(args, f"cupy.{name}"), **_unwrap(kwargs, f"cupy.{name}")))

    call.__name__ = name
    return call


class _Stream:
    def synchronize(self) -> None:
        pass


def make_module() -> types.ModuleType:
    """A fresh ``cupy``-like module over NumPy (``xp`` for the simulator)."""
    mod = types.ModuleType("fake_cupy", __doc__)
    for name in COMMON_NAMES:
        if name in ("cuda", "linalg", "random", "fft", "testing", "lib", "typing", "exceptions", "polynomial"):
            continue
        value = getattr(np, name, None)
        if value is None:
            continue
        if isinstance(value, type) or not callable(value):  # dtypes, ndarray class, constants
            setattr(mod, name, value)
        else:
            setattr(mod, name, _function(name, value))
    mod.ndarray = DeviceArray
    mod.asnumpy = lambda a, stream=None, order="C", out=None: (
        a.get() if isinstance(a, DeviceArray) else np.asarray(a))
    mod.get_array_module = lambda *args: mod if any(isinstance(a, DeviceArray) for a in args) else np
    linalg = types.ModuleType("fake_cupy.linalg")
    for name in LINALG_NAMES:
        setattr(linalg, name, _function(name, getattr(np.linalg, name)))
    mod.linalg = linalg
    stream = types.SimpleNamespace(null=_Stream(), Stream=_Stream)
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 12080,
                                    getDeviceProperties=lambda i: {"name": b"CPU stand-in"})
    mod.cuda = types.SimpleNamespace(Stream=types.SimpleNamespace(null=_Stream()), runtime=runtime,
                                     Device=lambda i=0: types.SimpleNamespace(synchronize=lambda: None, id=i),
                                     get_device_id=lambda: 0, is_available=lambda: True, stream=stream)
    mod.is_available = lambda: True
    mod.__version__ = "stand-in (CuPy 13/14 names)"
    return mod
