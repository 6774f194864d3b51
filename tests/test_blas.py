"""The CPU's BLAS road (kernels/gemm.cc, layers/blas.py): products and their gradients against numpy in
float64, and the layers that take it (Dense, attention) against XLA's own products."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vllama_jax import kernels
from vllama_jax.layers import blas
from vllama_jax.layers.attention import dot_product_attention
from vllama_jax.layers.linear import KERNEL_MAX_ROWS, dot

pytestmark = pytest.mark.skipif(not (jax.default_backend() == "cpu" and kernels.gemm_available()),
                                reason="BLAS road needs the CPU backend, a C++ compiler and numpy's OpenBLAS")


@pytest.fixture(autouse=True)
def blas_taken(monkeypatch):
    """These tests check the BLAS road itself, so they take it even on a CPU where XLA's GEMM is preferred
    (numpy's OpenBLAS on AVX2 kernels of an AVX-512 CPU: `test_blas_left_out_where_it_is_slower`)."""
    monkeypatch.setenv("VLLAMA_JAX_BLAS", "1")


def test_blas_left_out_where_it_is_slower(monkeypatch):
    monkeypatch.delenv("VLLAMA_JAX_BLAS")
    x = jnp.zeros((2, 2), jnp.float32)
    monkeypatch.setitem(kernels._gemm_state, "preferred", False)
    assert not kernels.gemm_usable(x)
    monkeypatch.setenv("VLLAMA_JAX_BLAS", "1")
    assert kernels.gemm_usable(x)
    monkeypatch.delenv("VLLAMA_JAX_BLAS")
    monkeypatch.setitem(kernels._gemm_state, "preferred", True)
    assert kernels.gemm_usable(x)
    # The rule: an AVX-512 CPU with OpenBLAS on another core's kernels.
    monkeypatch.setattr(kernels, "_cpu_has_avx512", lambda: True)
    assert kernels._blas_preferred("Haswell") is False and kernels._blas_preferred("SkylakeX") is True
    monkeypatch.setattr(kernels, "_cpu_has_avx512", lambda: False)
    assert kernels._blas_preferred("Haswell") is True


def _op(x, trans):
    return np.swapaxes(x, -1, -2) if trans else x


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_and_its_gradient_match_numpy(batch, trans_a, trans_b):
    m, k, n = 37, 70, 45  # no dim a multiple of a vector width
    rng = np.random.default_rng(len(batch) + 2 * trans_a + 4 * trans_b)
    a = rng.standard_normal(batch + ((k, m) if trans_a else (m, k))).astype(np.float32)
    b = rng.standard_normal(batch + ((n, k) if trans_b else (k, n))).astype(np.float32)
    dc = rng.standard_normal(batch + (m, n)).astype(np.float32)
    a64, b64, dc64 = (x.astype(np.float64) for x in (a, b, dc))

    got = np.asarray(jax.jit(lambda a, b: blas.matmul(a, b, trans_a, trans_b))(a, b))
    np.testing.assert_allclose(got, _op(a64, trans_a) @ _op(b64, trans_b), rtol=1e-5, atol=1e-4)

    # d/da, d/db of sum(op(a) op(b) * dc): the custom VJP's two sgemm calls.
    loss = lambda a, b: jnp.sum(blas.matmul(a, b, trans_a, trans_b) * dc)
    da, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    want_dopa = dc64 @ np.swapaxes(_op(b64, trans_b), -1, -2)  # (.., M, K)
    want_dopb = np.swapaxes(_op(a64, trans_a), -1, -2) @ dc64  # (.., K, N)
    np.testing.assert_allclose(np.asarray(da), _op(want_dopa, trans_a), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(db), _op(want_dopb, trans_b), rtol=1e-5, atol=1e-4)


def test_dense_products_take_the_blas_road_above_the_decode_rows(monkeypatch):
    monkeypatch.setattr(blas, "MIN_MACS", 0)
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((48, 40)).astype(np.float32))
    for shape in ((KERNEL_MAX_ROWS, 48), (KERNEL_MAX_ROWS + 1, 48), (3, 11, 48)):
        x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
        hlo = jax.jit(lambda x, w: dot(x, w)).lower(x, w).as_text()
        assert ("vj_gemm_f32" in hlo) == (x.size // 48 > KERNEL_MAX_ROWS), shape
        got = np.asarray(jax.jit(lambda x, w: dot(x, w))(x, w))
        np.testing.assert_allclose(got, np.asarray(x, np.float64) @ np.asarray(w, np.float64), rtol=1e-5, atol=1e-4)
    # bfloat16 stays with XLA, and so do products under MIN_MACS multiply-adds.
    xb = jnp.asarray(rng.standard_normal((64, 48)), jnp.bfloat16)
    assert "vj_gemm_f32" not in jax.jit(lambda x, w: dot(x, w, jnp.bfloat16)).lower(xb, w).as_text()
    monkeypatch.setattr(blas, "MIN_MACS", 64 * 48 * 40 + 1)
    assert "vj_gemm_f32" not in jax.jit(lambda x, w: dot(x, w)).lower(x, w).as_text()


def test_attention_through_blas_equals_xla_with_gradients(monkeypatch):
    """Grouped-query attention with a mask and a bias, forward and gradients, both roads."""
    monkeypatch.setattr(blas, "MIN_MACS", 0)
    rng = np.random.default_rng(1)
    b, l, h, kvh, hd = 2, 40, 4, 2, 16
    q, k, v = (jnp.asarray(rng.standard_normal((b, l, n, hd)).astype(np.float32)) for n in (h, kvh, kvh))
    mask = jnp.asarray(np.tril(np.ones((l, l), bool)))[None, None]
    bias = jnp.asarray(rng.standard_normal((1, h, l, l)).astype(np.float32))
    dout = jnp.asarray(rng.standard_normal((b, l, h, hd)).astype(np.float32))

    def run(q, k, v):
        out = dot_product_attention(q, k, v, mask=mask, bias=bias)
        return out, jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask=mask, bias=bias) * dout),
                             argnums=(0, 1, 2))(q, k, v)

    assert "vj_gemm_f32" in jax.jit(run).lower(q, k, v).as_text()
    out, grads = jax.jit(run)(q, k, v)
    monkeypatch.setattr(blas, "usable", lambda x, macs: False)
    run_xla = lambda q, k, v: run(q, k, v)  # a new function: jit would reuse the trace of `run`
    assert "vj_gemm_f32" not in jax.jit(run_xla).lower(q, k, v).as_text()
    out_xla, grads_xla = jax.jit(run_xla)(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_xla), rtol=1e-5, atol=1e-5)
    for g, g_xla in zip(grads, grads_xla):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_xla), rtol=1e-5, atol=1e-4)


def test_whole_model_through_blas_equals_xla(monkeypatch):
    """The tiny video model (CLIP tower, STC connector, Mistral decoder): its logits with every product on
    BLAS against every product on XLA (the products' gradients: the tests above)."""
    from vllama_jax.config import preset
    from vllama_jax.models.sequence import dummy_batch
    from vllama_jax.models.videollama2 import VideoLLaMA2

    cfg = preset("tiny-mistral")
    module = VideoLLaMA2(cfg)
    rng = np.random.default_rng(2)
    batch = {k: jnp.asarray(v) for k, v in dummy_batch(cfg, batch=2, text_len=40).items()}
    batch["input_ids"] = jnp.asarray(rng.integers(3, cfg.decoder.vocab_size, (2, 40)), jnp.int32).at[:, 1].set(
        batch["input_ids"][0, 1])
    batch["video"] = jnp.asarray(rng.standard_normal(batch["video"].shape).astype(np.float32))
    params = jax.jit(module.init)(jax.random.PRNGKey(0), batch)["params"]
    run = lambda params: module.apply({"params": params}, batch)["logits"]

    monkeypatch.setattr(blas, "MIN_MACS", 0)
    on_blas = jax.jit(run).lower(params)
    assert on_blas.as_text().count("vj_gemm_f32") > 10
    monkeypatch.setattr(blas, "usable", lambda x, macs: False)
    on_xla = jax.jit(lambda params: run(params)).lower(params)  # a new function: jit would reuse the trace
    assert "vj_gemm_f32" not in on_xla.as_text()
    np.testing.assert_allclose(np.asarray(on_blas.compile()(params)), np.asarray(on_xla.compile()(params)),
                               rtol=1e-5, atol=1e-5)
