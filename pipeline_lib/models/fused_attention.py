"""Fused multi-head attention for inference on the CPU: one pass per query row, no score matrix.

For one head of one batch element, queries ``q_n``, keys ``k_m`` and values ``v_m`` of width
``dh`` and a key padding mask, every query row computes::

    s_m   = scale * q_n . k_m                  (masked keys: s_m = -inf)
    out_n = sum_m exp(s_m - max_m s_m) v_m / sum_m exp(s_m - max_m s_m)

which is ``softmax(scale Q K^T + M) V``: the attention of
:class:`pipeline_lib.models.layers.MultiHeadAttention`, the same maths as
``torch.nn.functional.scaled_dot_product_attention``, evaluated in another order.

Why: MACE-TNP's heads are narrow (``dh = D / h = 8`` at ``d_model`` 32, 4 heads) and its sets
long (500 observational rows), so attention is ``N^2 h`` scores of 8 products each. PyTorch's
CPU kernel spends its time in small matrix products around each block of scores (measured: about
2 ns per score on the 2-core benchmark machine). Here each head's keys and values are copied
once, transposed, so that 16 keys are one vector; two query rows at a time keep their scores in
a small buffer and share every key and value load; ``exp`` is evaluated in vector registers:
about 1 ns per score. Sets of fewer than 16 keys (attention over a few nodes) take a row at a
time with keys read in place. The kernel is a short C function compiled once per machine with
the system C compiler (``cc -O3 -march=native``, cached under
``$CAUSALMETA_KERNEL_CACHE`` or ``~/.cache/causalmeta``) and called through ``ctypes``, which
releases the GIL, so ``torch.get_num_threads()`` Python threads split the ``batch x heads``
range.

**Opt-in** (``CAUSALMETA_FUSED_ATTENTION=1``): by default :func:`available` is False and every
caller uses PyTorch's kernel. Hand-written C compiled at run time is a portability and
maintenance cost the project takes only where a user asks for it (CPU inference, where it
measured ~1.6x per MACE-TNP query); PyTorch's kernel is the reference the tests hold it to.
Without a compiler, :func:`available` stays False (with a warning) and PyTorch's kernel is used.

Accuracy: ``exp(x)`` for ``x <= 0`` is ``2^k p(r)`` with ``x = k ln 2 + r``, ``|r| <= ln 2 / 2``
and ``p`` the degree-7 Taylor polynomial (truncation below 1e-8 relative; measured 1.4e-7
relative over ``[-87, 0]``, about one float32 rounding), and exactly 0 below ``-88`` (masked keys
get zero weight); sums run in float32 like PyTorch's. Against a float64 reference on random
inputs, its error is the size of PyTorch's (a few 1e-6 on outputs of order 1).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_SOURCE = r"""
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W 16
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf vset(float x) { return (vf){0} + x; }
static inline vf vmax(vf a, vf b)
{
    vi m = a > b, ai, bi, r;
    vf out;
    memcpy(&ai, &a, sizeof a); memcpy(&bi, &b, sizeof b);
    r = (m & ai) | (~m & bi);
    memcpy(&out, &r, sizeof out);
    return out;
}

/* exp(x), x <= 0: x = k ln2 + r with k = round(x log2 e) (adding 1.5 2^23 rounds to the nearest
   integer, which is then the low bits of the sum), exp(r) by Taylor to degree 7, 2^k by the exponent
   bits. x is clamped at -88, where k = -127 and the exponent bits are 0: exactly 0, so masked keys
   (score -FLT_MAX) get exactly zero weight (exp(x) < 1.2e-38 is flushed to 0 from x < -87.7). */
static inline vf vexp(vf x)
{
    const vf magic = vset(12582912.f);
    x = vmax(x, vset(-88.f));
    const vf t = x * vset(1.44269504088896341f) + magic;
    const vf kf = t - magic;
    vi tb, mb;
    memcpy(&tb, &t, sizeof t);
    memcpy(&mb, &magic, sizeof magic);
    const vi k = tb - mb;
    const vf r = x - kf * vset(0.693145751953125f) - kf * vset(1.428606765330187e-06f);
    vf p = vset(1.f / 5040.f);
    p = p * r + vset(1.f / 720.f);
    p = p * r + vset(1.f / 120.f);
    p = p * r + vset(1.f / 24.f);
    p = p * r + vset(1.f / 6.f);
    p = p * r + vset(0.5f);
    p = p * r + vset(1.f);
    p = p * r + vset(1.f);
    const vi bits = (k + 127) << 23;
    vf scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#if defined(__clang__) || __GNUC__ >= 12
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
static inline float hsum(vf v)  /* halving: 2 vector adds and 3 scalar ones */
{
    const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}
#else
static inline float hsum(vf v) { float s = 0.f; for (int l = 0; l < W; ++l) s += v[l]; return s; }
#endif
static inline float hmax(vf v) { float s = v[0]; for (int l = 1; l < W; ++l) s = v[l] > s ? v[l] : s; return s; }

/* R query rows of one head (R = 1 or 2: two rows share every key and value load). kt, vt: the head's
   keys / values transposed, (dh, Lp), zero-padded from Lk to Lp = nv W; s: R Lp scores. */
static inline __attribute__((always_inline)) void
rows(const int64_t R, const int64_t dh, const float *const *qr, float *const *orow, const float *kt,
     const float *vt, const uint8_t *mk, int64_t Lk, int64_t nv, float scale, float *s)
{
    const int64_t Lp = nv * W;
    vf qs[R][dh], m0[R], tot[R], acc[R][dh];
    for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < dh; ++c) qs[r][c] = vset(qr[r][c] * scale);
    for (int64_t t = 0; t < nv; ++t) {
        vf sc[R];
        for (int64_t r = 0; r < R; ++r) sc[r] = vset(0.f);
        for (int64_t c = 0; c < dh; ++c) {
            const vf kk = vload(kt + c * Lp + t * W);
            for (int64_t r = 0; r < R; ++r) sc[r] += qs[r][c] * kk;
        }
        for (int64_t r = 0; r < R; ++r) memcpy(s + r * Lp + t * W, &sc[r], sizeof sc[r]);
    }
    for (int64_t r = 0; r < R; ++r) {
        float *sr = s + r * Lp;
        for (int64_t m = Lk; m < Lp; ++m) sr[m] = -FLT_MAX;
        if (mk)
            for (int64_t m = 0; m < Lk; ++m) if (!mk[m]) sr[m] = -FLT_MAX;
        vf mx = vset(-FLT_MAX);
        for (int64_t t = 0; t < nv; ++t) mx = vmax(vload(sr + t * W), mx);
        m0[r] = vset(hmax(mx));
        tot[r] = vset(0.f);
        for (int64_t c = 0; c < dh; ++c) acc[r][c] = vset(0.f);
    }
    for (int64_t t = 0; t < nv; ++t) {
        vf e[R];
        for (int64_t r = 0; r < R; ++r) {
            e[r] = vexp(vload(s + r * Lp + t * W) - m0[r]);
            tot[r] += e[r];
        }
        for (int64_t c = 0; c < dh; ++c) {
            const vf vv = vload(vt + c * Lp + t * W);
            for (int64_t r = 0; r < R; ++r) acc[r][c] += e[r] * vv;
        }
    }
    for (int64_t r = 0; r < R; ++r) {
        const float inv = 1.f / hsum(tot[r]);
        for (int64_t c = 0; c < dh; ++c) orow[r][c] = hsum(acc[r][c]) * inv;
    }
}

/* fewer keys than one vector (attention over a handful of nodes): one row at a time, keys and
   values read in place, the row's scores one vector */
static inline __attribute__((always_inline)) void
heads_short(const int64_t dh, const float *q, const float *k, const float *v, const uint8_t *mask, float *out,
            const int64_t *st, int64_t H, int64_t Lq, int64_t Lk, float scale, int64_t lo, int64_t hi)
{
    for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const float *kb = k + b * st[2] + h * dh, *vb = v + b * st[4] + h * dh;
        const uint8_t *mk = mask ? mask + b * Lk : 0;
        for (int64_t n = 0; n < Lq; ++n) {
            const float *qn = q + b * st[0] + n * st[1] + h * dh;
            float *on = out + ((b * Lq + n) * H + h) * dh;
            float qs[dh], sc[W];
            for (int64_t c = 0; c < dh; ++c) qs[c] = qn[c] * scale;
            float mx = -FLT_MAX;
            for (int64_t m = 0; m < W; ++m) {
                float a = -FLT_MAX;
                if (m < Lk && (!mk || mk[m])) {
                    a = 0.f;
                    for (int64_t c = 0; c < dh; ++c) a += qs[c] * kb[m * st[3] + c];
                }
                sc[m] = a;
                mx = a > mx ? a : mx;
            }
            const vf e = vexp(vload(sc) - vset(mx));
            float acc[dh];
            for (int64_t c = 0; c < dh; ++c) acc[c] = 0.f;
            for (int64_t m = 0; m < Lk; ++m)
                for (int64_t c = 0; c < dh; ++c) acc[c] += e[m] * vb[m * st[5] + c];
            const float inv = 1.f / hsum(e);
            for (int64_t c = 0; c < dh; ++c) on[c] = acc[c] * inv;
        }
    }
}

static inline __attribute__((always_inline)) void
heads(const int64_t dh, const float *q, const float *k, const float *v, const uint8_t *mask, float *out,
      const int64_t *st, int64_t H, int64_t Lq, int64_t Lk, float scale, int64_t lo, int64_t hi, float *buf)
{
    const int64_t nv = (Lk + W - 1) / W, Lp = nv * W;
    float *kt = buf, *vt = buf + dh * Lp, *s = buf + 2 * dh * Lp;
    for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const float *kb = k + b * st[2] + h * dh, *vb = v + b * st[4] + h * dh;
        for (int64_t m = 0; m < Lp; ++m)  /* this head's keys and values, transposed and zero-padded */
            for (int64_t c = 0; c < dh; ++c) {
                kt[c * Lp + m] = m < Lk ? kb[m * st[3] + c] : 0.f;
                vt[c * Lp + m] = m < Lk ? vb[m * st[5] + c] : 0.f;
            }
        const uint8_t *mk = mask ? mask + b * Lk : 0;
        const float *qb = q + b * st[0] + h * dh;
        float *ob = out + (b * Lq * H + h) * dh;
        int64_t n = 0;
        for (; n + 1 < Lq; n += 2) {
            const float *qr[2] = {qb + n * st[1], qb + (n + 1) * st[1]};
            float *orow[2] = {ob + n * H * dh, ob + (n + 1) * H * dh};
            rows(2, dh, qr, orow, kt, vt, mk, Lk, nv, scale, s);
        }
        if (n < Lq) {
            const float *qr[1] = {qb + n * st[1]};
            float *orow[1] = {ob + n * H * dh};
            rows(1, dh, qr, orow, kt, vt, mk, Lk, nv, scale, s);
        }
    }
}

/* q: (B, Lq, H, dh), k, v: (B, Lk, H, dh), each with (H, dh) contiguous and batch / row strides
   st = {q_b, q_n, k_b, k_m, v_b, v_m} (elements); out: (B, Lq, H, dh) contiguous; mask: (B, Lk),
   nonzero = real key, or NULL. Computes the (b, h) pairs b H + h in [lo, hi). Returns 0, or 1
   when out of memory. */
int attend(const float *q, const float *k, const float *v, const uint8_t *mask, float *out, const int64_t *st,
           int64_t H, int64_t Lq, int64_t Lk, int64_t dh, float scale, int64_t lo, int64_t hi)
{
    if (Lk < W) {
        if (dh == 8) heads_short(8, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi);
        else if (dh == 16) heads_short(16, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi);
        else heads_short(dh, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi);
        return 0;
    }
    const int64_t Lp = (Lk + W - 1) / W * W;
    float *buf = (float *)malloc(sizeof(float) * (size_t)((2 * dh + 2) * Lp));
    if (!buf) return 1;
    if (dh == 8) heads(8, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi, buf);
    else if (dh == 16) heads(16, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi, buf);
    else if (dh == 32) heads(32, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi, buf);
    else heads(dh, q, k, v, mask, out, st, H, Lq, Lk, scale, lo, hi, buf);
    free(buf);
    return 0;
}
"""

_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC"]
_lock = threading.Lock()
_state: dict = {}


def _cpu_signature() -> str:
    """What ``-march=native`` compiled for: the CPU model and flags (a cached library is per CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    keep = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(sorted(set(keep)))


def _build() -> ctypes.CDLL | None:
    if os.environ.get("CAUSALMETA_FUSED_ATTENTION", "0") != "1":  # opt-in: module docstring
        return None
    cache = Path(os.environ.get("CAUSALMETA_KERNEL_CACHE") or Path.home() / ".cache" / "causalmeta")
    digest = hashlib.sha256("\n".join([_SOURCE, " ".join(_FLAGS), _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache / f"fused_attention-{digest}.so"
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "attend.c"
                src.write_text(_SOURCE)
                built = Path(tmp) / "attend.so"
                subprocess.run([os.environ.get("CC", "cc"), *_FLAGS, "-o", str(built), str(src)],
                               check=True, capture_output=True, timeout=120)
                os.replace(built, target)  # atomic: a concurrent reader sees all of it or none
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            warnings.warn(f"fused CPU attention unavailable (PyTorch's kernel is used): {exc} "
                          f"{detail.decode(errors='replace')[:300]}", RuntimeWarning, stacklevel=3)
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:  # e.g. a cache shared with another kind of machine
        warnings.warn(f"fused CPU attention unavailable (PyTorch's kernel is used): {exc}", RuntimeWarning,
                      stacklevel=3)
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.attend.argtypes = [p, p, p, p, p, ctypes.POINTER(i), i, i, i, i, ctypes.c_float, i, i]
    lib.attend.restype = ctypes.c_int
    return lib


def _library() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _build()
        return _state["lib"]


def available() -> bool:
    """Whether the fused kernel is compiled and enabled on this machine."""
    return _library() is not None


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        if _state.get("pool_size") != n:
            if "pool" in _state:
                _state["pool"].shutdown(wait=False)
            _state["pool"], _state["pool_size"] = ThreadPoolExecutor(n, thread_name_prefix="attention"), n
        return _state["pool"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """``softmax(scale q k^T + M) v`` per head, computed by the fused kernel (no autograd).

    Shapes: ``q: (B, L_q, H, dh)``, ``k, v: (B, L_k, H, dh)`` (float32, CPU; strided rows are
    read in place where each row's ``(H, dh)`` block is contiguous, e.g. slices of one projection),
    ``key_mask: (B, L_k)`` bool with ``True`` for real keys (at least one per row) or None
    -> ``(B, L_q, H, dh)``. Call only where :func:`available` is True.
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("fused CPU attention is not available on this machine")
    b, l_q, h, dh = q.shape
    l_k = k.shape[1]
    # rows may be strided (k, v: slices of one projection), a row's (H, dh) block contiguous
    q, k, v = (x if x.stride(-1) == 1 and x.stride(-2) == dh else x.contiguous() for x in (q, k, v))
    strides = (ctypes.c_int64 * 6)(q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    mask = None if key_mask is None else key_mask.to(torch.uint8).contiguous()
    out = q.new_empty((b, l_q, h, dh))
    ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), None if mask is None else mask.data_ptr(), out.data_ptr(),
            strides)
    pairs = b * h
    # threads only where each gets enough scores (a pool hand-off costs ~0.1-0.4 ms)
    n = max(1, min(torch.get_num_threads(), pairs * l_q * l_k // 200_000))

    def run(lo: int, hi: int) -> int:
        return lib.attend(*ptrs, h, l_q, l_k, dh, float(scale), lo, hi)

    with torch.profiler.record_function("fused_attention"):  # named in profiles (ctypes calls are not)
        if n == 1:
            codes = [run(0, pairs)]
        else:
            bounds = [pairs * t // n for t in range(n + 1)]
            codes = list(_pool(n).map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise MemoryError("fused CPU attention: no memory for its score buffer")
    return out
