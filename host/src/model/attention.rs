//! Causal attention of one sequence on the CPU, on the rayon pool that runs the matmuls.
//!
//! Why our own: candle's fused CPU kernel (`candle_nn::attention::flash_attn`) runs on candle's
//! own thread pool, whose workers spin for a while after every call. On two cores they took
//! time from the rayon threads running the next matmul: 12 % of a q4_k decode step in a
//! profile, and decode ran 11 % faster with candle's pool switched off (docs/performance.md).
//! One pool for all CPU work avoids that. The kernel also reads a bf16 cache directly, where
//! candle's needed the whole cache converted to f32 on every layer of every step.
//!
//! Layouts are the forward pass's: queries `(n, heads, d)` at positions `offset..offset + n`,
//! keys and values `(offset + n, kv_heads, d)` (token-major, as the KV cache stores them), and
//! the output `(n, heads, d)`, which is already the `(n, heads · d)` the output projection
//! takes. Query head `h` reads kv head `h / (heads / kv_heads)`, as in transformers'
//! `repeat_kv`. Each task is one (query token, kv head) pair and computes all the query heads
//! that share that kv head, so a key or value row is read once for all of them.

use rayon::prelude::*;

use super::dense::Weight;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    /// New query tokens.
    pub n: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Cached tokens before the first query (its position).
    pub offset: usize,
}

/// `out = softmax(q kᵀ · scale + causal mask) v` per query head.
pub(crate) fn causal<T: Weight>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    s: AttnShape,
    scale: f32,
    out: &mut [f32],
) {
    let AttnShape { n, heads, kv_heads, head_dim: d, offset } = s;
    assert!(kv_heads > 0 && heads % kv_heads == 0, "{heads} query heads over {kv_heads} kv heads");
    let len = offset + n;
    assert_eq!(q.len(), n * heads * d);
    assert_eq!(out.len(), n * heads * d);
    assert_eq!(keys.len(), len * kv_heads * d);
    assert_eq!(values.len(), len * kv_heads * d);
    let groups = heads / kv_heads;
    let simd = simd_available();
    out.par_chunks_mut(groups * d).enumerate().for_each(|(task, out)| {
        let (i, g) = (task / kv_heads, task % kv_heads);
        let q = &q[(i * heads + g * groups) * d..][..groups * d];
        let task = Task { q, keys, values, out, kv_heads, g, d, visible: offset + i + 1, scale };
        if simd {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                run_avx2(task)
            };
        } else {
            run(task, dot, axpy);
        }
    });
}

/// One (query token, kv head) pair: its query heads' rows of `q` and `out` (`groups · d`).
struct Task<'a, T> {
    q: &'a [f32],
    keys: &'a [T],
    values: &'a [T],
    out: &'a mut [f32],
    kv_heads: usize,
    g: usize,
    d: usize,
    /// Keys this query sees: positions `0..visible`.
    visible: usize,
    scale: f32,
}

/// Scores, softmax and the weighted sum of values for one task; `dot` and `axpy` are the
/// portable or the AVX2 inner loops.
#[inline(always)]
fn run<'a, T: Weight>(
    t: Task<'a, T>,
    dot: impl Fn(&[f32], &[T]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[T]),
) {
    let Task { q, keys, values, out, kv_heads, g, d, visible, scale } = t;
    let groups = q.len() / d;
    let row = |m: &'a [T], j: usize| -> &'a [T] { &m[(j * kv_heads + g) * d..][..d] };
    let mut scores = vec![0f32; groups * visible];
    for j in 0..visible {
        let k = row(keys, j);
        for (r, qr) in q.chunks_exact(d).enumerate() {
            scores[r * visible + j] = dot(qr, k) * scale;
        }
    }
    let mut norms = Vec::with_capacity(groups);
    for s in scores.chunks_exact_mut(visible) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        norms.push(1.0 / sum);
    }
    out.fill(0.0);
    for j in 0..visible {
        let v = row(values, j);
        for (r, o) in out.chunks_exact_mut(d).enumerate() {
            axpy(o, scores[r * visible + j], v);
        }
    }
    for (o, norm) in out.chunks_exact_mut(d).zip(norms) {
        o.iter_mut().for_each(|x| *x *= norm);
    }
}

fn dot<T: Weight>(a: &[f32], b: &[T]) -> f32 {
    a.iter().zip(b).map(|(&a, &b)| a * b.widen()).sum()
}

fn axpy<T: Weight>(y: &mut [f32], p: f32, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += p * x.widen());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<T: Weight>(t: Task<'_, T>) {
    // SAFETY (both closures): the CPU has AVX2 and FMA, as this function requires.
    run(t, |a, b| unsafe { dot_avx2(a, b) }, |y, p, x| unsafe { axpy_avx2(y, p, x) });
}

/// Two accumulators of 8 lanes (a 128-wide head is 16 steps; one chain would wait on the
/// FMA latency), then the tail one element at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2<T: Weight>(a: &[f32], b: &[T]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut c = 0;
    while c + 16 <= n {
        // SAFETY: c + 16 <= n, both slices are at least n long.
        unsafe {
            for (h, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(a.as_ptr().add(c + 8 * h));
                *acc = _mm256_fmadd_ps(x, T::load8(b.as_ptr().add(c + 8 * h)), *acc);
            }
        }
        c += 16;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 floats of room.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
    lanes.iter().sum::<f32>() + dot(&a[c..n], &b[c..n])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_avx2<T: Weight>(y: &mut [f32], p: f32, x: &[T]) {
    use std::arch::x86_64::*;
    let n = y.len().min(x.len());
    let pv = _mm256_set1_ps(p);
    let mut c = 0;
    while c + 8 <= n {
        // SAFETY: c + 8 <= n, both slices are at least n long.
        unsafe {
            let at = y.as_mut_ptr().add(c);
            _mm256_storeu_ps(at, _mm256_fmadd_ps(pv, T::load8(x.as_ptr().add(c)), _mm256_loadu_ps(at)));
        }
        c += 8;
    }
    axpy(&mut y[c..n], p, &x[c..n]);
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    /// The textbook computation in f64: scores for all visible keys, softmax, weighted sum.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, scale: f32) -> Vec<f64> {
        let AttnShape { n, heads, kv_heads, head_dim: d, offset } = s;
        let mut out = vec![0f64; n * heads * d];
        for i in 0..n {
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let qr = &q[(i * heads + h) * d..][..d];
                let scores: Vec<f64> = (0..=offset + i)
                    .map(|j| {
                        let kr = &k[(j * kv_heads + g) * d..][..d];
                        qr.iter().zip(kr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>()
                            * f64::from(scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, p) in e.iter().enumerate() {
                    let vr = &v[(j * kv_heads + g) * d..][..d];
                    for c in 0..d {
                        out[(i * heads + h) * d + c] += p / sum * f64::from(vr[c]);
                    }
                }
            }
        }
        out
    }

    fn random(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn max_error(got: &[f32], want: &[f64]) -> f64 {
        got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max)
    }

    /// Decode (one query after a cache), prefill (many queries from position 0), a chunk in
    /// the middle; GQA 1:1, 2:1 and 4:1; a head size that is not a multiple of the vector width.
    const SHAPES: [AttnShape; 5] = [
        AttnShape { n: 1, heads: 16, kv_heads: 8, head_dim: 128, offset: 40 },
        AttnShape { n: 7, heads: 8, kv_heads: 2, head_dim: 64, offset: 0 },
        AttnShape { n: 5, heads: 4, kv_heads: 4, head_dim: 32, offset: 11 },
        AttnShape { n: 3, heads: 6, kv_heads: 3, head_dim: 20, offset: 2 },
        AttnShape { n: 1, heads: 2, kv_heads: 1, head_dim: 8, offset: 0 },
    ];

    #[test]
    fn f32_attention_matches_the_f64_reference() {
        let mut seed = 7;
        for s in SHAPES {
            let kv = (s.offset + s.n) * s.kv_heads * s.head_dim;
            let (q, k, v) =
                (random(s.n * s.heads * s.head_dim, &mut seed), random(kv, &mut seed), random(kv, &mut seed));
            let scale = 1.0 / (s.head_dim as f32).sqrt();
            let mut out = vec![f32::NAN; q.len()];
            causal(&q, &k, &v, s, scale, &mut out);
            let err = max_error(&out, &reference(&q, &k, &v, s, scale));
            assert!(err < 1e-5, "{s:?}: max error {err}");
            // The portable loops agree with the vector ones within rounding.
            let mut plain = vec![f32::NAN; q.len()];
            let groups = s.heads / s.kv_heads;
            for (task, o) in plain.chunks_mut(groups * s.head_dim).enumerate() {
                let (i, g) = (task / s.kv_heads, task % s.kv_heads);
                let qt = &q[(i * s.heads + g * groups) * s.head_dim..][..groups * s.head_dim];
                let t = Task {
                    q: qt,
                    keys: &k[..],
                    values: &v[..],
                    out: o,
                    kv_heads: s.kv_heads,
                    g,
                    d: s.head_dim,
                    visible: s.offset + i + 1,
                    scale,
                };
                run(t, dot, axpy);
            }
            assert!(max_error(&plain, &reference(&q, &k, &v, s, scale)) < 1e-5, "{s:?}: portable loops");
        }
    }

    #[test]
    fn bf16_cache_is_read_as_its_f32_values() {
        let mut seed = 11;
        for s in SHAPES {
            let kv = (s.offset + s.n) * s.kv_heads * s.head_dim;
            let q = random(s.n * s.heads * s.head_dim, &mut seed);
            let k: Vec<bf16> = random(kv, &mut seed).into_iter().map(bf16::from_f32).collect();
            let v: Vec<bf16> = random(kv, &mut seed).into_iter().map(bf16::from_f32).collect();
            let (k32, v32): (Vec<f32>, Vec<f32>) =
                (k.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_f32()).collect());
            let scale = 1.0 / (s.head_dim as f32).sqrt();
            let mut out = vec![f32::NAN; q.len()];
            causal(&q, &k, &v, s, scale, &mut out);
            let err = max_error(&out, &reference(&q, &k32, &v32, s, scale));
            assert!(err < 1e-5, "{s:?}: max error {err}");
        }
    }
}
