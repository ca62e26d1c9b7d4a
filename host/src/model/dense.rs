//! `y = x · Wᵀ` on the CPU for a few rows of `x` at once (a decode step of a batch): every
//! weight row is read from memory once and multiplied with all rows of `x` while it is in L1.
//!
//! Why our own: decoding is memory-bound, and candle's CPU matmul (the `gemm` crate) packs the
//! weights and runs few threads for 2–16 rows, so a batch of 4 was slower than 4 single steps,
//! and its one-row matrix-vector path reached about half the memory bandwidth on an AVX-512
//! machine (measured: docs/performance.md). Here a batch of `m` rows costs about one weight
//! read, one row included. Weights may be f32 or bf16 (widened in
//! registers: half the bytes read per token). The kernel is compiled twice, for AVX2+FMA and
//! for baseline x86-64, and picked at run time, so one binary is fast on any x86-64 CPU.

use half::bf16;
use rayon::prelude::*;

/// Most rows this kernel takes; more rows (prefill) go to the matrix-matrix path, which
/// reuses each weight across many rows through cache blocking.
pub(crate) const MAX_ROWS: usize = 32;

/// Weight elements the kernel reads.
pub(crate) trait Weight: Copy + Send + Sync {
    /// How far ahead of the loads the SIMD kernels ask for each weight row (0: not at all).
    const PREFETCH_BYTES: usize;
    fn widen(self) -> f32;
    /// Eight weights from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points to 8 readable elements, and the CPU has AVX2 (only called from
    /// [`block_avx2`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen weights from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points to 16 readable elements, and the CPU has AVX-512F (only called from
    /// [`block_avx512`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Weight for f32 {
    // Measured: no gain (f32 decode already reads at about the memory bandwidth).
    const PREFETCH_BYTES: usize = 0;

    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: as the trait says.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: as the trait says.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl Weight for bf16 {
    // bf16 decode stalled on its loads at about 60 % of f32's bytes per second; asking for
    // each row 1 KB ahead made it 17 % faster (512 B did about as well, 2 KB worse;
    // docs/performance.md).
    const PREFETCH_BYTES: usize = 1024;

    #[inline(always)]
    fn widen(self) -> f32 {
        // bf16 is the top half of an f32.
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: as the trait says; widening is zero-extend to 32 bits, then shift left by 16.
        unsafe {
            let halves = _mm_loadu_si128(p.cast::<__m128i>());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: as the trait says; the same widening, 16 lanes.
        unsafe {
            let halves = _mm256_loadu_si256(p.cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
        }
    }
}

/// Output rows computed per rayon task: enough work to amortise scheduling (a 1024-wide row
/// is 4 KB of weights).
const ROWS_PER_TASK: usize = 16;
/// Lanes of the accumulators: LLVM turns the lane loops into vector instructions.
const LANES: usize = 16;

/// `y[i][j] = Σ_k x[i][k] · w[j][k]` for `x: (m, k)`, `w: (n, k)` (both row-major), `y: (m, n)`.
pub(crate) fn matmul<W: Weight>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, y: &mut [f32]) {
    assert!((1..=MAX_ROWS).contains(&m), "{m} rows");
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), m * n);
    // Computed transposed (one weight row's m results together), then scattered into y; one
    // row (a single stream's decode step) is its own transpose and goes straight into y.
    let mut transposed = if m == 1 { Vec::new() } else { vec![0f32; n * m] };
    let yt: &mut [f32] = if m == 1 { y } else { &mut transposed };
    let isa = isa();
    yt.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, out)| {
        let first = task * ROWS_PER_TASK;
        let rows = out.len() / m;
        let w = &w[first * k..(first + rows) * k];
        match isa {
            // SAFETY: the CPU has these instructions (checked at run time).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { block_avx512(x, m, k, w, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { block_avx2(x, m, k, w, out) },
            Isa::Portable => block(x, m, k, w, out),
        }
    });
    if m > 1 {
        for j in 0..n {
            for i in 0..m {
                y[i * n + j] = transposed[j * m + i];
            }
        }
    }
}

/// The instruction set the kernel runs with, the widest the CPU has;
/// `PIPEHOST_DENSE_KERNEL=avx2|portable` picks a narrower one, to compare them side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let asked = std::env::var("PIPEHOST_DENSE_KERNEL").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if is_x86_feature_detected!("avx512f") && avx2 && asked.is_empty() {
                return Isa::Avx512;
            }
            if avx2 && asked != "portable" {
                return Isa::Avx2;
            }
        }
        let _ = asked;
        Isa::Portable
    })
}

/// One vector instruction set for [`block_simd`]: its lane type and the few operations the
/// kernel uses. Every method is `unsafe`: it needs the CPU to have the instructions, which the
/// entry points ([`block_avx2`], [`block_avx512`]) guarantee.
#[cfg(target_arch = "x86_64")]
trait Simd {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load_x(p: *const f32) -> Self::V;
    unsafe fn load_w<W: Weight>(p: *const W) -> Self::V;
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    unsafe fn sum(v: Self::V) -> f32;
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = std::arch::x86_64::__m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: the caller's features.
        unsafe { std::arch::x86_64::_mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> Self::V {
        // SAFETY: the caller's (8 readable floats).
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Weight>(p: *const W) -> Self::V {
        // SAFETY: the caller's.
        unsafe { W::load8(p) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // SAFETY: the caller's features.
        unsafe { std::arch::x86_64::_mm256_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats of room.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    type V = std::arch::x86_64::__m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        // SAFETY: the caller's features.
        unsafe { std::arch::x86_64::_mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load_x(p: *const f32) -> Self::V {
        // SAFETY: the caller's (16 readable floats).
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_w<W: Weight>(p: *const W) -> Self::V {
        // SAFETY: the caller's.
        unsafe { W::load16(p) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        // SAFETY: the caller's features.
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(a, b, acc) }
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        // SAFETY: the caller's features.
        unsafe { std::arch::x86_64::_mm512_reduce_add_ps(v) }
    }
}

/// AVX2 + FMA with explicit 256-bit vectors (left to itself, LLVM vectorised the portable
/// kernel 128 bits wide here and ran at a quarter of the speed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<W: Weight>(x: &[f32], m: usize, k: usize, w: &[W], out: &mut [f32]) {
    // SAFETY: this function's features are the ones `Avx2` needs.
    unsafe { block_simd::<Avx2, W>(x, m, k, w, out) }
}

/// AVX-512F: 16 lanes, so a pass reads a whole 64-byte line of f32 weights per row (bf16: two
/// passes), which keeps more bytes in flight per instruction than AVX2 does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512<W: Weight>(x: &[f32], m: usize, k: usize, w: &[W], out: &mut [f32]) {
    // SAFETY: this function's features are the ones `Avx512` needs.
    unsafe { block_simd::<Avx512, W>(x, m, k, w, out) }
}

/// Several weight rows at a time: every load of `x` feeds that many multiply-adds, and a core
/// keeps that many weight streams in flight (one or two streams per core left a decode step at
/// about half the memory bandwidth). Each (weight row, x row) pair has its own accumulator and
/// the same instruction sequence whatever is grouped with it, so a row's result does not
/// depend on its batch.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_simd<S: Simd, W: Weight>(x: &[f32], m: usize, k: usize, w: &[W], out: &mut [f32]) {
    let rows: Vec<&[f32]> = x.chunks_exact(k).collect();
    let n = out.len() / m;
    let wrow = |j: usize| &w[j * k..(j + 1) * k];
    let mut j = 0;
    while j < n {
        // 4 weight rows with up to 2 x rows, 2 with up to 4: at most 8 accumulators.
        let quad = n - j >= 4 && m <= 2;
        let take = if quad { 4 } else { (n - j).min(2) };
        let ws4 = [wrow(j), wrow((j + 1).min(n - 1)), wrow((j + 2).min(n - 1)), wrow((j + 3).min(n - 1))];
        let mut i = 0;
        while i < m {
            let g = if quad { m - i } else { GROUP.min(m - i) };
            // SAFETY: the caller's features; rows and weights are k long.
            let res: [[f32; GROUP]; 4] = unsafe {
                match (quad, g) {
                    (true, 1) => widen4(dots_simd::<S, W, 4, 1>(ws4, [rows[i]])),
                    (true, _) => widen4(dots_simd::<S, W, 4, 2>(ws4, [rows[i], rows[i + 1]])),
                    (false, 1) => widen4(dots_simd::<S, W, 2, 1>([ws4[0], ws4[1]], [rows[i]])),
                    (false, 2) => widen4(dots_simd::<S, W, 2, 2>([ws4[0], ws4[1]], [rows[i], rows[i + 1]])),
                    (false, 3) => {
                        widen4(dots_simd::<S, W, 2, 3>([ws4[0], ws4[1]], [rows[i], rows[i + 1], rows[i + 2]]))
                    }
                    (false, _) => widen4(dots_simd::<S, W, 2, GROUP>(
                        [ws4[0], ws4[1]],
                        [rows[i], rows[i + 1], rows[i + 2], rows[i + 3]],
                    )),
                }
            };
            for (r, res) in res.iter().enumerate().take(take) {
                out[(j + r) * m + i..(j + r) * m + i + g].copy_from_slice(&res[..g]);
            }
            i += g;
        }
        j += take;
    }
}

/// Pads `R` rows of `G` results to 4 × `GROUP` so the caller's match arms have one type.
#[inline(always)]
fn widen4<const R: usize, const G: usize>(v: [[f32; G]; R]) -> [[f32; GROUP]; 4] {
    let mut out = [[0f32; GROUP]; 4];
    for (o, r) in out.iter_mut().zip(&v) {
        o[..G].copy_from_slice(r);
    }
    out
}

/// The dot products of `R` weight rows with `G` rows of `x`. Two vectors per row per pass, so
/// that with AVX-512 a pass reads one whole 64-byte line of a bf16 row (one prefetch per line);
/// for AVX2 it measured the same as one vector per pass.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots_simd<S: Simd, W: Weight, const R: usize, const G: usize>(
    ws: [&[W]; R],
    xs: [&[f32]; G],
) -> [[f32; G]; R] {
    let k = ws[0].len();
    let step = 2 * S::LANES;
    let full = k / step * step;
    // SAFETY (all below): the caller's features; c + step <= k, and every row is k long.
    let mut acc = [[unsafe { S::zero() }; G]; R];
    let mut c = 0;
    let ahead = W::PREFETCH_BYTES / std::mem::size_of::<W>();
    while c < full {
        if ahead > 0 {
            for w in ws {
                // A hint: never faults, so the address may lie past the row's end.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        w.as_ptr().wrapping_add(c + ahead).cast(),
                    )
                };
            }
        }
        for at in [c, c + S::LANES] {
            unsafe {
                let wv: [S::V; R] = std::array::from_fn(|r| S::load_w(ws[r].as_ptr().add(at)));
                for g in 0..G {
                    let xv = S::load_x(xs[g].as_ptr().add(at));
                    for r in 0..R {
                        acc[r][g] = S::fma(wv[r], xv, acc[r][g]);
                    }
                }
            }
        }
        c += step;
    }
    let mut out = [[0f32; G]; R];
    for r in 0..R {
        for g in 0..G {
            let mut s = unsafe { S::sum(acc[r][g]) };
            for t in full..k {
                s = ws[r][t].widen().mul_add(xs[g][t], s);
            }
            out[r][g] = s;
        }
    }
    out
}

/// Baseline x86-64 (and other CPUs): portable code, separate multiply and add (a fused one would
/// be a libm call without FMA).
fn block<W: Weight>(x: &[f32], m: usize, k: usize, w: &[W], out: &mut [f32]) {
    kernel(x, m, k, w, out, |a, b, c| a * b + c)
}

/// Rows of `x` per pass over a weight row: 4 rows × 2 accumulators (8 AVX2 registers) leave
/// room for the weights.
const GROUP: usize = 4;

#[inline(always)]
fn kernel<W: Weight>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    out: &mut [f32],
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let rows: Vec<&[f32]> = x.chunks_exact(k).collect();
    for (row, out) in w.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
        let mut i = 0;
        while i < m {
            match m - i {
                1 => out[i] = dots::<W, 1>(row, [rows[i]], fma)[0],
                2 => out[i..i + 2].copy_from_slice(&dots::<W, 2>(row, [rows[i], rows[i + 1]], fma)),
                3 => out[i..i + 3].copy_from_slice(&dots::<W, 3>(
                    row,
                    [rows[i], rows[i + 1], rows[i + 2]],
                    fma,
                )),
                _ => out[i..i + GROUP].copy_from_slice(&dots::<W, GROUP>(
                    row,
                    [rows[i], rows[i + 1], rows[i + 2], rows[i + 3]],
                    fma,
                )),
            }
            i += GROUP.min(m - i);
        }
    }
}

/// The dot products of one weight row with `G` rows of `x`, with `G × LANES` accumulators that
/// stay in registers (`G` is a constant, so the loops unroll).
#[inline(always)]
fn dots<W: Weight, const G: usize>(
    row: &[W],
    xs: [&[f32]; G],
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) -> [f32; G] {
    let (wc, wt) = row.as_chunks::<LANES>();
    let xc: [&[[f32; LANES]]; G] = xs.map(|x| x.as_chunks::<LANES>().0);
    for x in &xc {
        assert_eq!(x.len(), wc.len());
    }
    let mut acc = [[0f32; LANES]; G];
    for (c, w) in wc.iter().enumerate() {
        let mut wv = [0f32; LANES];
        for l in 0..LANES {
            wv[l] = w[l].widen();
        }
        for g in 0..G {
            let xv = &xc[g][c];
            for l in 0..LANES {
                acc[g][l] = fma(wv[l], xv[l], acc[g][l]);
            }
        }
    }
    let full = wc.len() * LANES;
    let mut out = [0f32; G];
    for g in 0..G {
        let mut sum: f32 = acc[g].iter().sum();
        for (t, w) in wt.iter().enumerate() {
            sum = fma(w.widen(), xs[g][full + t], sum);
        }
        out[g] = sum;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] =
                    (0..k).map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c])).sum::<f64>() as f32;
            }
        }
        y
    }

    /// A deterministic stream of values in [-1, 1).
    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_a_plain_product_for_odd_shapes_and_both_code_paths() {
        for &(m, k, n) in &[(1, 64, 7), (3, 100, 33), (4, 1024, 17), (7, 17, 5), (32, 256, 40), (9, 1, 3)] {
            let x = values(1, m * k);
            let w = values(2, n * k);
            let want = reference(&x, m, k, &w, n);
            let mut got = vec![0f32; m * n];
            matmul(&x, m, k, &w, n, &mut got);
            let mut baseline = vec![0f32; m * n];
            // The baseline (non-SIMD) block directly, transposed like the parallel path.
            let mut yt = vec![0f32; n * m];
            block(&x, m, k, &w, &mut yt);
            for j in 0..n {
                for i in 0..m {
                    baseline[i * n + j] = yt[j * m + i];
                }
            }
            let tol = 1e-5 * k as f32;
            for (idx, ((g, b), r)) in got.iter().zip(&baseline).zip(&want).enumerate() {
                assert!((g - r).abs() <= tol, "m={m} k={k} n={n} [{idx}]: {g} vs {r}");
                assert!((b - r).abs() <= tol, "baseline m={m} k={k} n={n} [{idx}]: {b} vs {r}");
            }
        }
    }

    /// Every kernel this CPU can run, on the whole of `w` in one block (transposed output).
    fn every_kernel<W: Weight>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[W],
        n: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let untranspose = |yt: Vec<f32>| {
            let mut y = vec![0f32; m * n];
            for j in 0..n {
                for i in 0..m {
                    y[i * n + j] = yt[j * m + i];
                }
            }
            y
        };
        let mut out = Vec::new();
        let mut yt = vec![0f32; n * m];
        block(x, m, k, w, &mut yt);
        out.push(("portable", untranspose(yt)));
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut yt = vec![0f32; n * m];
                // SAFETY: checked just above.
                unsafe { block_avx2(x, m, k, w, &mut yt) };
                out.push(("avx2", untranspose(yt)));
                if is_x86_feature_detected!("avx512f") {
                    let mut yt = vec![0f32; n * m];
                    // SAFETY: checked just above.
                    unsafe { block_avx512(x, m, k, w, &mut yt) };
                    out.push(("avx512", untranspose(yt)));
                }
            }
        }
        out
    }

    #[test]
    fn every_instruction_set_matches_the_plain_product_in_f32_and_bf16() {
        for &(m, k, n) in &[(1, 1024, 9), (2, 100, 13), (5, 64, 6), (1, 33, 4), (3, 512, 5)] {
            let x = values(5, m * k);
            let w32 = values(6, n * k);
            let w16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let tol = 1e-5 * k as f32;
            for (want, got) in [
                (reference(&x, m, k, &w32, n), every_kernel(&x, m, k, &w32, n)),
                (reference(&x, m, k, &wide, n), every_kernel(&x, m, k, &w16, n)),
            ] {
                for (isa, y) in got {
                    for (idx, (g, r)) in y.iter().zip(&want).enumerate() {
                        assert!((g - r).abs() <= tol, "{isa} m={m} k={k} n={n} [{idx}]: {g} vs {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_weights_are_widened_exactly() {
        let (m, k, n) = (5, 96, 11);
        let x = values(3, m * k);
        let w: Vec<bf16> = values(4, n * k).into_iter().map(bf16::from_f32).collect();
        let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let want = reference(&x, m, k, &wide, n);
        let mut got = vec![0f32; m * n];
        matmul(&x, m, k, &w, n, &mut got);
        for (g, r) in got.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-5 * k as f32, "{g} vs {r}");
        }
    }
}
