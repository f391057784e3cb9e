"""Fast CPU kernels as MindSpore custom ops: exact GELU, 3x3 depthwise conv, LayerNorm,
bilinear resize, multi-head attention.

MindSpore 2.10's CPU kernels for exact GELU (Erf), grouped convolution and LayerNorm are
3-30x slower than PyTorch's at SegFormer/ViT shapes (benchmarks/bench_models.py).
``csrc/cpu_kernels.cc`` implements them (forward and backward) as
``ops.Custom(func_type="aot")`` kernels; this module compiles that file once per machine
with the system C++ compiler and wraps the entry points as Primitives with their
gradients. The attention kernels are there for memory as much as for speed: they read the
heads in place (no Transposes, whose CPU kernels keep an 8 B/element index table for the
graph's lifetime) and never store the [queries, keys] scores.

Only the cpu backend (``cpu.py``) uses them; ``kernel_backend: auto`` picks that backend on
a CPU device when the library builds (``build_library``), the reference backend otherwise.

The compiled library is cached in ``$MS_SEG_KERNEL_CACHE`` (default
``~/.cache/ms_segformer/kernels``) under a name that hashes the source, the compiler
version, the flags and this CPU's instruction-set flags (``-march=native``: a shared home
directory on a cluster of mixed CPUs gets one library per CPU kind). It is written to a
temporary file and renamed, so concurrent workers (msrun) never load a half-written file.
Beside it, ``<library>.sha256`` records the file's hash at build time; a library that no
longer matches it (a truncated or overwritten cache file, which would otherwise end the
process with a bus error or a dlopen failure when MindSpore loads it) is rebuilt, with a
warning naming it.
``$MS_SEG_KERNEL_MARCH`` replaces ``native`` in ``-march=`` (e.g. ``x86-64-v3`` for one
library that runs on every AVX2 machine); the kernels pick their SIMD width from it at
compile time (AVX-512, AVX/AVX2, else 16-byte vectors).
"""
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings

from mindspore import ops

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "cpu_kernels.cc")
ENV_CACHE = "MS_SEG_KERNEL_CACHE"
ENV_MARCH = "MS_SEG_KERNEL_MARCH"
DIGEST_SUFFIX = ".sha256"


def compiler_flags():
    # -fno-trapping-math: without it GCC keeps every loop with a clamp or a select scalar
    # (a float compare "may trap"): the exact GELU, its gradients and the attention's exp.
    # Nothing here reads floating-point exception flags.
    march = os.environ.get(ENV_MARCH, "").strip() or "native"
    return ["-std=c++17", "-O3", f"-march={march}", "-fopenmp-simd", "-fno-trapping-math",
            "-pthread", "-shared", "-fPIC"]


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler_version(cxx):
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def _cache_dir():
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "ms_segformer", "kernels")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".digest_")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other readers of the cache
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _cached_library_problem(path):
    """None if the cached ``path`` is the file that was built (its recorded sha256), else why
    it cannot be trusted."""
    try:
        with open(path + DIGEST_SUFFIX) as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        return f"no {DIGEST_SUFFIX} was recorded beside it"
    try:
        actual = _sha256(path)
    except OSError as err:
        return f"it cannot be read ({err})"
    if actual != recorded:
        return (f"its sha256 {actual[:12]}... differs from the {recorded[:12]}... recorded when "
                f"it was built (truncated or overwritten)")
    return None


@functools.lru_cache(maxsize=None)
def build_library():
    """``(path, None)`` of the compiled kernel library, building it on first use, or
    ``(None, reason)`` when it cannot be built (no compiler, a compile error)."""
    cxx = os.environ.get("CXX", "g++")
    flags = compiler_flags()
    try:
        with open(SOURCE, "rb") as f:
            source = f.read()
        key = hashlib.sha256(b"\0".join([
            source, _compiler_version(cxx).encode(), " ".join(flags).encode(),
            _cpu_flags().encode()])).hexdigest()[:16]
        cache = _cache_dir()
        path = os.path.join(cache, f"cpu_kernels_{key}.so")
        if os.path.isfile(path):
            problem = _cached_library_problem(path)
            if problem is None:
                return path, None
            warnings.warn(f"compiled kernel library {path}: {problem}; rebuilding it")
        os.makedirs(cache, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".cpu_kernels_", suffix=".so")
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *flags, "-o", tmp, SOURCE], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cxx} exited with {proc.returncode}: "
                                   f"{proc.stderr.strip()[-2000:]}")
            # the digest first: killed between the two renames, the next run sees a mismatch
            _write_atomically(path + DIGEST_SUFFIX, _sha256(tmp) + "\n")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path, None
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        return None, str(err)


def library_path():
    """Path of the compiled kernel library, or None when it cannot be built."""
    return build_library()[0]


def build_error():
    """Why the library could not be built (None when it was)."""
    return build_library()[1]


def _custom(name, out_shape, out_dtype, bprop=None):
    return ops.Custom(f"{library_path()}:{name}", out_shape=out_shape, out_dtype=out_dtype,
                      func_type="aot", bprop=bprop)


def _same_shape(*shapes):
    return shapes[0]


def _same_dtype(*dtypes):
    return dtypes[0]


def gelu_erf_op():
    """Primitive ``y = gelu(x)`` (exact, erf) with its gradient; float32."""
    grad = _custom("GeluErfGrad", _same_shape, _same_dtype)

    def bprop(x, out, dout):
        return (grad(x, dout),)

    return _custom("GeluErf", _same_shape, _same_dtype, bprop)


def gelu_erf_bias_op():
    """Primitive ``y = gelu(h + bias)`` (exact GELU; ``bias [D]`` over the last axis of ``h``)
    with its gradient: a Linear's bias fused into the activation that follows; float32."""
    grad = _custom("GeluErfBiasGrad", lambda h, b, dy: (h, b), lambda h, b, dy: (h, h))

    def bprop(h, bias, out, dout):
        return grad(h, bias, dout)

    return _custom("GeluErfBias", lambda h, b: h, lambda h, b: h, bprop)


def depthwise_conv3x3_nhwc_op():
    """Primitive ``y = conv(x, weight, bias)``: 3x3 depthwise, stride 1, padding 1, on
    channels-last ``x [B, H, W, C]``; ``weight [C, 1, 3, 3]``, ``bias [C]``; float32."""
    grad_input = _custom("DepthwiseConv3x3NhwcGradInput", _same_shape, _same_dtype)
    grad_weight = _custom("DepthwiseConv3x3NhwcGradWeight",
                          lambda x, dy: ([x[3], 1, 3, 3], [x[3]]),
                          lambda x, dy: (x, x))

    def bprop(x, weight, bias, out, dout):
        dw, db = grad_weight(x, dout)
        return grad_input(dout, weight), dw, db

    return _custom("DepthwiseConv3x3Nhwc", lambda x, w, b: x, lambda x, w, b: x, bprop)


def layer_norm_op():
    """Primitive ``(y, mean, rstd) = layer_norm(x, gamma, beta, eps)`` over the last axis of
    ``x`` (float32; ``eps`` a float32 tensor of shape [1]), with its gradient."""
    grad = _custom("LayerNormGrad", lambda x, dy, g, m, r: (x, g, g),
                   lambda x, dy, g, m, r: (x, x, x))

    def bprop(x, gamma, beta, eps, out, dout):
        _, mean, rstd = out
        dx, dgamma, dbeta = grad(x, dout[0], gamma, mean, rstd)
        return dx, dgamma, dbeta, ops.zeros_like(eps)

    def rows(x):
        return [functools.reduce(lambda a, b: a * b, x[:-1], 1)]

    return _custom("LayerNorm", lambda x, g, b, e: (x, rows(x), rows(x)),
                   lambda x, g, b, e: (x, x, x), bprop)


def resize_bilinear_op():
    """Primitive ``y = resize(x, like)``: bilinear, align_corners=False (half-pixel centres),
    of ``x [N, C, h, w]`` float32 to the last two dimensions of ``like`` (any tensor, only its
    shape is read; it gets no gradient), as ``ops.interpolate(mode="bilinear")``."""
    grad = _custom("ResizeBilinearGrad", lambda dy, x: x, lambda dy, x: x)

    def bprop(x, like, out, dout):
        return grad(dout, x), ops.zeros_like(like)

    return _custom("ResizeBilinear", lambda x, like: list(x[:2]) + list(like[-2:]),
                   lambda x, like: x, bprop)


def resize_bilinear_add_op():
    """Primitive ``y = base + resize(x)``: ``resize_bilinear_op``'s resize of ``x [N, C, h, w]``
    to the size of ``base [N, C, H, W]``, added to ``base``; float32."""
    grad = _custom("ResizeBilinearGrad", lambda dy, x: x, lambda dy, x: x)

    def bprop(x, base, out, dout):
        return grad(dout, x), dout

    return _custom("ResizeBilinearAdd", lambda x, base: base, lambda x, base: base, bprop)


def swap_middle_axes_op():
    """Primitive ``y = x.transpose(0, 2, 1, 3)`` for ``x [A, M, N, K]`` (float32), with the same
    op as its gradient: layout changes without MindSpore's CPU Transpose, which keeps an
    8 B/element index table for the graph's lifetime. Callers reshape to 4-D around it."""
    def bprop(x, out, dout):
        return (op(dout),)

    op = _custom("SwapMiddleAxes", lambda x: [x[0], x[2], x[1], x[3]], _same_dtype, bprop)
    return op


def attention_op():
    """Primitive ``(out, lse) = attention(q, kv)``: multi-head softmax(q k^T / sqrt(d)) v for
    ``q [B, Nq, H, d]`` and ``kv [B, Nk, 2, H, d]`` (keys then values, as a fused kv Linear's
    output reshaped); ``out [B, Nq, H, d]``, ``lse [B, H, Nq]`` the log-sum-exp of each score
    row (kept for the gradient, which recomputes the scores); float32."""
    grad = _custom("AttentionGrad", lambda q, kv, o, lse, do: (q, kv),
                   lambda q, kv, o, lse, do: (q, q))

    def bprop(q, kv, out, dout):
        return grad(q, kv, out[0], out[1], dout[0])

    return _custom("Attention", lambda q, kv: (q, [q[0], q[2], q[1]]),
                   lambda q, kv: (q, q), bprop)


def self_attention_op():
    """Primitive ``(out, lse) = self_attention(qkv)``: as ``attention_op`` with q, k and v
    from ``qkv [B, N, 3, H, d]`` (a fused qkv Linear's output reshaped); float32."""
    grad = _custom("SelfAttentionGrad", lambda qkv, o, lse, do: qkv,
                   lambda qkv, o, lse, do: qkv)

    def bprop(qkv, out, dout):
        return (grad(qkv, out[0], out[1], dout[0]),)

    return _custom("SelfAttention",
                   lambda qkv: ([qkv[0], qkv[1], qkv[3], qkv[4]], [qkv[0], qkv[3], qkv[1]]),
                   lambda qkv: (qkv, qkv), bprop)
