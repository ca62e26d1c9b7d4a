//! Quantized weight matrices (ggml's q8_0 and q4_k) and our own CPU matmul for them.
//!
//! Blocks come in ggml's byte layout (from a GGUF file, or from candle's quantizer at load, so
//! both paths hold identical bits) and are unpacked once into structs the kernels read
//! directly: f16 scales widened to f32, q4_k's packed 6-bit scales and mins split into bytes.
//!
//! The matmul `y = x @ W^T` quantizes the activation rows to 8 bits once (blocks of 32, f32
//! scale, plus each block's sum for q4_k's minimums), then for every weight row computes its
//! dot product with *all* activation rows while that weight row is in cache: the weights are
//! read from memory once per matmul, whatever the number of rows (a batch of decodes or a
//! prefill chunk). Rayon splits the output columns. Each (row, column) dot product is computed
//! by the same instruction sequence whatever rows run beside it, so a sequence's logits do not
//! depend on its batch.
//!
//! Kernels: a plain scalar reference, AVX2+FMA (`maddubs`), and AVX-512 VNNI on 256-bit
//! vectors (`vpdpbusd`), chosen at run time with `is_x86_feature_detected!`
//! (`PIPEHOST_QUANT_KERNEL=scalar|avx2|vnni` forces one, `vnni-rows` runs VNNI on the row
//! layout instead of 16-row tiles, and `candle` builds the matrices as candle's own `QMatMul`
//! instead: all for measurements).

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

use super::error::Result;

/// Values per q8_0 block (and per block of quantized activations).
pub(crate) const QK8: usize = 32;
/// Values per q4_k super-block.
pub(crate) const QKK: usize = 256;

/// The quantized formats our kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKind {
    /// 8-bit, one f16 scale per 32 values: 8.5 bits per weight.
    Q8_0,
    /// 4-bit k-quant: super-blocks of 256 with 6-bit scales and mins per 32: 4.5 bits per weight.
    Q4K,
}

impl QuantKind {
    pub(crate) fn ggml(self) -> GgmlDType {
        match self {
            QuantKind::Q8_0 => GgmlDType::Q8_0,
            QuantKind::Q4K => GgmlDType::Q4K,
        }
    }

    pub(crate) fn block(self) -> usize {
        match self {
            QuantKind::Q8_0 => QK8,
            QuantKind::Q4K => QKK,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantKind::Q8_0 => "q8_0",
            QuantKind::Q4K => "q4_k",
        }
    }

    /// The kind a matrix with rows of `cols` values gets when `self` is asked for: q4_k needs
    /// rows that are whole super-blocks of 256 and falls back to q8_0 (rows of 32); `None`
    /// means not even that fits and the matrix stays dense.
    pub(crate) fn for_cols(self, cols: usize) -> Option<QuantKind> {
        if cols.is_multiple_of(self.block()) {
            Some(self)
        } else if cols.is_multiple_of(QK8) {
            Some(QuantKind::Q8_0)
        } else {
            None
        }
    }
}

/// One q8_0 block, unpacked: value `i` is `d * qs[i]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8Block {
    d: f32,
    qs: [i8; QK8],
}

/// One q4_k super-block, unpacked: value `32 * j + i` is `d * sc[j] * q - dmin * m[j]`, with
/// the 4-bit `q` of sub-block `j` in the low nibbles of `qs[32 * (j / 2)..][..32]` for even `j`
/// and in the high nibbles for odd `j` (ggml's order).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q4KBlock {
    d: f32,
    dmin: f32,
    sc: [u8; 8],
    m: [u8; 8],
    qs: [u8; 128],
}

/// 16 weight rows by 32 values of q8_0, interleaved for `vpdpbusd` (AVX-512 VNNI): one
/// instruction multiplies 4 activation bytes (broadcast) with 4 values of each of the 16 rows.
/// `qs[64 * g + 4 * r + j]` is row `r`'s value `4 * g + j` plus 128 (unsigned); the 128 is
/// taken back out through the activation block's sum. Rows past the matrix are zero.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q8Tile {
    d: [f32; TILE],
    qs: [u8; QK8 * TILE],
}

/// Output rows per [`Q8Tile`] and [`Q4KTile`].
const TILE: usize = 16;

/// 16 weight rows by one q4_k super-block (256 values), interleaved for `vpdpbusd` like
/// [`Q8Tile`]. Sub-blocks come in pairs as in ggml: `qs[512 * p + 64 * g + 4 * r + j]` holds
/// row `r`'s value `4 * g + j` of sub-block `2 * p` in its low nibble and of sub-block
/// `2 * p + 1` in its high nibble (the 4-bit values are unsigned, so no offset is needed).
/// Scales stay 6-bit integers per row and sub-block (`sc[j][r]`, `m[j][r]`), widened in
/// registers: 4.75 bits per weight, the same as [`Q4KBlock`]. Rows past the matrix are zero.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Q4KTile {
    d: [f32; TILE],
    dmin: [f32; TILE],
    sc: [[u8; TILE]; 8],
    m: [[u8; TILE]; 8],
    qs: [u8; QKK / 2 * TILE],
}

#[derive(Debug, Clone)]
enum Blocks {
    Q8(Vec<Q8Block>),
    /// q8_0 in tiles of 16 rows, `[row group][block]` (chosen when the CPU has VNNI).
    Q8Tiled(Vec<Q8Tile>),
    Q4K(Vec<Q4KBlock>),
    /// q4_k in tiles of 16 rows, `[row group][super-block]` (chosen when the CPU has VNNI).
    Q4KTiled(Vec<Q4KTile>),
}

/// A quantized `(rows, cols)` weight matrix, applied as `x @ W^T`.
#[derive(Debug, Clone)]
pub(crate) struct QMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// ggml blocks (rows of `cols` values) regrouped into tiles of 16 rows, `[row group][block]`:
/// `fill(tile, r, block)` writes row `r`'s block (its ggml bytes) into a tile that starts as
/// `empty()`; rows past the matrix keep `empty()`'s values.
fn tiles_from_blocks<T: Send>(
    kind: QuantKind,
    rows: usize,
    cols: usize,
    bytes: &[u8],
    empty: impl Fn() -> T + Sync,
    fill: impl Fn(&mut T, usize, &[u8]) + Sync,
) -> Result<Vec<T>> {
    let block_bytes = match kind {
        QuantKind::Q8_0 => 34,
        QuantKind::Q4K => 144,
    };
    let nb = cols / kind.block();
    if !cols.is_multiple_of(kind.block()) || bytes.len() != rows * nb * block_bytes {
        return Err(candle_core::Error::Msg(format!(
            "{} bytes for {rows} rows of {cols} {} values",
            bytes.len(),
            kind.name()
        ))
        .into());
    }
    let groups = rows.div_ceil(TILE);
    let mut tiles = huge_page_vec(groups * nb);
    (0..groups * nb)
        .into_par_iter()
        .map(|i| {
            let (g, b) = (i / nb, i % nb);
            let mut tile = empty();
            for r in 0..TILE.min(rows - g * TILE) {
                let at = ((g * TILE + r) * nb + b) * block_bytes;
                fill(&mut tile, r, &bytes[at..at + block_bytes]);
            }
            tile
        })
        .collect_into_vec(&mut tiles);
    Ok(tiles)
}

/// An empty vector with room for `len` values, its memory advised to the kernel as
/// transparent-huge-page memory before anything touches it. Decode streams every weight once
/// per token; with 4 KB pages a 2.5 GB model is ~600,000 TLB misses per token, with 2 MB pages
/// ~1,300. Linux's default THP mode is `madvise`, so without the advice the weights get 4 KB
/// pages. `PIPEHOST_HUGE_PAGES=0` leaves them so (for side-by-side figures). Small buffers and
/// other systems are left alone.
pub fn huge_page_vec<T>(len: usize) -> Vec<T> {
    let v = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("PIPEHOST_HUGE_PAGES").map_or(true, |v| v != "0"));
        let (start, bytes) = (v.as_ptr() as usize, len * std::mem::size_of::<T>());
        // The 2 MB-aligned part of the allocation (glibc maps large ones page-aligned only).
        let (from, to) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if on && to > from {
            // SAFETY: [from, to) lies inside the vector's own allocation; MADV_HUGEPAGE changes
            // how its pages are backed, never their contents. A failure (a kernel without THP)
            // only means small pages, so its result is not checked.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

impl QMatrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn kind(&self) -> QuantKind {
        match self.blocks {
            Blocks::Q8(_) | Blocks::Q8Tiled(_) => QuantKind::Q8_0,
            Blocks::Q4K(_) | Blocks::Q4KTiled(_) => QuantKind::Q4K,
        }
    }

    /// From ggml's block bytes (`BlockQ8_0`: f16 d, 32 i8; `BlockQ4K`: f16 d, f16 dmin,
    /// 12 bytes of scales, 128 of quants), rows of `cols` values.
    pub fn from_ggml(kind: QuantKind, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        #[cfg(target_arch = "x86_64")]
        if kernel() == Isa::Vnni && std::env::var("PIPEHOST_QUANT_KERNEL").as_deref() != Ok("vnni-rows") {
            return match kind {
                QuantKind::Q8_0 => Self::tiles_from_ggml(rows, cols, bytes),
                QuantKind::Q4K => Self::q4k_tiles_from_ggml(rows, cols, bytes),
            };
        }
        Self::from_ggml_rows(kind, rows, cols, bytes)
    }

    /// q8_0 ggml bytes straight into [`Q8Tile`]s (no row-layout copy in between).
    fn tiles_from_ggml(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let empty = || Q8Tile { d: [0.0; TILE], qs: [128; QK8 * TILE] };
        let tiles = tiles_from_blocks(QuantKind::Q8_0, rows, cols, bytes, empty, |tile, r, blk| {
            tile.d[r] = f16_at(blk, 0);
            for (k, &q) in blk[2..34].iter().enumerate() {
                tile.qs[64 * (k / 4) + 4 * r + k % 4] = (i16::from(q as i8) + 128) as u8;
            }
        })?;
        Ok(QMatrix { rows, cols, blocks: Blocks::Q8Tiled(tiles) })
    }

    /// q4_k ggml bytes (`BlockQ4K`, 144 bytes per 256 values) straight into [`Q4KTile`]s.
    fn q4k_tiles_from_ggml(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let tiles = tiles_from_blocks(QuantKind::Q4K, rows, cols, bytes, Q4KTile::zero, |tile, r, blk| {
            tile.set_row(r, f16_at(blk, 0), f16_at(blk, 2), &blk[4..16], &blk[16..144])
        })?;
        Ok(QMatrix { rows, cols, blocks: Blocks::Q4KTiled(tiles) })
    }

    /// q8_0 rows regrouped into [`Q8Tile`]s (other kinds unchanged).
    #[cfg(test)]
    pub(crate) fn tiled(self) -> Self {
        if let Blocks::Q4K(blocks) = &self.blocks {
            let nb = self.cols / QKK;
            let groups = self.rows.div_ceil(TILE);
            let tiles = (0..groups * nb)
                .map(|i| {
                    let (g, b) = (i / nb, i % nb);
                    let mut tile = Q4KTile::zero();
                    for r in 0..TILE.min(self.rows - g * TILE) {
                        let blk = &blocks[(g * TILE + r) * nb + b];
                        tile.d[r] = blk.d;
                        tile.dmin[r] = blk.dmin;
                        for j in 0..8 {
                            (tile.sc[j][r], tile.m[j][r]) = (blk.sc[j], blk.m[j]);
                        }
                        tile.set_quants(r, &blk.qs);
                    }
                    tile
                })
                .collect();
            return QMatrix { rows: self.rows, cols: self.cols, blocks: Blocks::Q4KTiled(tiles) };
        }
        let Blocks::Q8(blocks) = &self.blocks else { return self };
        let nb = self.cols / QK8;
        let groups = self.rows.div_ceil(TILE);
        let tiles = (0..groups * nb)
            .into_par_iter()
            .map(|i| {
                let (g, b) = (i / nb, i % nb);
                let mut tile = Q8Tile { d: [0.0; TILE], qs: [128; QK8 * TILE] };
                for r in 0..TILE {
                    let row = g * TILE + r;
                    if row >= self.rows {
                        break;
                    }
                    let blk = &blocks[row * nb + b];
                    tile.d[r] = blk.d;
                    for (k, &q) in blk.qs.iter().enumerate() {
                        tile.qs[64 * (k / 4) + 4 * r + k % 4] = (i16::from(q) + 128) as u8;
                    }
                }
                tile
            })
            .collect();
        QMatrix { rows: self.rows, cols: self.cols, blocks: Blocks::Q8Tiled(tiles) }
    }

    /// [`Self::from_ggml`] in the row layout every kernel reads.
    pub(crate) fn from_ggml_rows(kind: QuantKind, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| candle_core::Error::Msg(m);
        if !cols.is_multiple_of(kind.block()) {
            return Err(bad(format!("{} rows of {cols} values are not whole blocks", kind.name())).into());
        }
        let (block_bytes, n) = match kind {
            QuantKind::Q8_0 => (34, rows * cols / QK8),
            QuantKind::Q4K => (144, rows * cols / QKK),
        };
        if bytes.len() != n * block_bytes {
            return Err(bad(format!("{} bytes for {n} {} blocks", bytes.len(), kind.name())).into());
        }
        // On huge pages like the tiles (CPUs without VNNI run this layout).
        let blocks = match kind {
            QuantKind::Q8_0 => {
                let mut v = huge_page_vec(n);
                bytes
                    .par_chunks_exact(block_bytes)
                    .map(|b| {
                        let mut qs = [0i8; QK8];
                        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                            *q = byte as i8;
                        }
                        Q8Block { d: f16_at(b, 0), qs }
                    })
                    .collect_into_vec(&mut v);
                Blocks::Q8(v)
            }
            QuantKind::Q4K => {
                let mut v = huge_page_vec(n);
                bytes
                    .par_chunks_exact(block_bytes)
                    .map(|b| {
                        let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
                        for j in 0..8 {
                            (sc[j], m[j]) = scale_min_k4(j, &b[4..16]);
                        }
                        let mut qs = [0u8; 128];
                        qs.copy_from_slice(&b[16..144]);
                        Q4KBlock { d: f16_at(b, 0), dmin: f16_at(b, 2), sc, m, qs }
                    })
                    .collect_into_vec(&mut v);
                Blocks::Q4K(v)
            }
        };
        Ok(QMatrix { rows, cols, blocks })
    }

    /// Quantize a 2-D weight with candle's quantizer (ggml's reference rounding), returning the
    /// ggml bytes: what `pipehost quantize` writes and what loading them gives back.
    pub fn quantize_ggml(w: &Tensor, kind: QuantKind) -> Result<Vec<u8>> {
        let w = w.to_dtype(DType::F32)?;
        let (rows, cols) = w.dims2()?;
        // Row chunks quantize independently (blocks never cross rows), so in parallel.
        const CHUNK: usize = 64;
        let parts: Vec<Result<Vec<u8>>> = (0..rows.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let n = CHUNK.min(rows - c * CHUNK);
                // A fresh tensor: candle's quantize reads the whole storage, ignoring a
                // narrowed view's offset.
                let part = w.narrow(0, c * CHUNK, n)?.flatten_all()?.to_vec1::<f32>()?;
                let part = Tensor::from_vec(part, (n, cols), &candle_core::Device::Cpu)?;
                let q = QTensor::quantize(&part, kind.ggml())?;
                Ok(q.data()?.into_owned())
            })
            .collect();
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&p?);
        }
        Ok(out)
    }

    /// Quantize a `(rows, cols)` weight.
    pub fn quantize(w: &Tensor, kind: QuantKind) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        Self::from_ggml(kind, rows, cols, &Self::quantize_ggml(w, kind)?)
    }

    /// Row `r` dequantized into `out` (`cols` values): embedding lookups.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match &self.blocks {
            Blocks::Q8Tiled(t) => {
                let per = self.cols / QK8;
                let (g, l) = (r / TILE, r % TILE);
                for (tile, o) in t[g * per..(g + 1) * per].iter().zip(out.chunks_exact_mut(QK8)) {
                    for (k, v) in o.iter_mut().enumerate() {
                        let q = i16::from(tile.qs[64 * (k / 4) + 4 * l + k % 4]) - 128;
                        *v = tile.d[l] * f32::from(q);
                    }
                }
            }
            Blocks::Q8(b) => {
                let per = self.cols / QK8;
                for (blk, o) in b[r * per..(r + 1) * per].iter().zip(out.chunks_exact_mut(QK8)) {
                    for (v, &q) in o.iter_mut().zip(&blk.qs) {
                        *v = blk.d * f32::from(q);
                    }
                }
            }
            Blocks::Q4KTiled(t) => {
                let per = self.cols / QKK;
                let (g, l) = (r / TILE, r % TILE);
                for (tile, o) in t[g * per..(g + 1) * per].iter().zip(out.chunks_exact_mut(QKK)) {
                    for (j, sub) in o.chunks_exact_mut(32).enumerate() {
                        let d = tile.d[l] * f32::from(tile.sc[j][l]);
                        let m = tile.dmin[l] * f32::from(tile.m[j][l]);
                        for (k, v) in sub.iter_mut().enumerate() {
                            let byte = tile.qs[512 * (j / 2) + 64 * (k / 4) + 4 * l + k % 4];
                            let q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
                            *v = d * f32::from(q) - m;
                        }
                    }
                }
            }
            Blocks::Q4K(b) => {
                let per = self.cols / QKK;
                for (blk, o) in b[r * per..(r + 1) * per].iter().zip(out.chunks_exact_mut(QKK)) {
                    for j in 0..8 {
                        let (d, m) = (blk.d * f32::from(blk.sc[j]), blk.dmin * f32::from(blk.m[j]));
                        let qs = &blk.qs[32 * (j / 2)..32 * (j / 2) + 32];
                        for (i, v) in o[32 * j..32 * j + 32].iter_mut().enumerate() {
                            let q = if j % 2 == 0 { qs[i] & 0xF } else { qs[i] >> 4 };
                            *v = d * f32::from(q) - m;
                        }
                    }
                }
            }
        }
    }

    /// `x @ W^T` for `m` rows of `x` (row-major, `m * cols`): `(m, rows)` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(kernel(), x, m)
    }

    pub(crate) fn matmul_with(&self, isa: Isa, x: &[f32], m: usize) -> Vec<f32> {
        Self::matmul_group_with(isa, &[self], x, m).pop().expect("one matrix, one output")
    }

    /// `x @ Wᵀ` for several matrices that read the same activation rows (a layer's q, k and v
    /// projections; gate and up): the rows are quantized once and every matrix's share of the
    /// work runs in one parallel region. A decode step on two cores is ~27 ms over ~200
    /// matmuls, so waking the pool once instead of three times is worth having. Each output
    /// is the same bits as that matrix's [`Self::matmul`].
    pub fn matmul_group(mats: &[&QMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        Self::matmul_group_with(kernel(), mats, x, m)
    }

    pub(crate) fn matmul_group_with(isa: Isa, mats: &[&QMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
        let Some(cols) = mats.first().map(|q| q.cols) else { return Vec::new() };
        assert!(mats.iter().all(|q| q.cols == cols), "a group's matrices read rows of one width");
        assert_eq!(x.len(), m * cols, "activation shape");
        if m == 0 {
            return vec![Vec::new(); mats.len()];
        }
        let act = Act::quantize(x, m, cols);
        let threads = rayon::current_num_threads().max(1);
        let mut bufs: Vec<Vec<f32>> = mats.iter().map(|q| vec![0f32; q.work_len(m)]).collect();
        let mut work = Vec::new();
        for (q, buf) in mats.iter().zip(bufs.iter_mut()) {
            q.split_work(isa, m, threads, buf, &mut work);
        }
        work.into_par_iter().for_each(|w| w.run(&act, m));
        mats.iter().zip(bufs).map(|(q, buf)| q.unpack(buf, m)).collect()
    }

    fn is_tiled(&self) -> bool {
        matches!(self.blocks, Blocks::Q8Tiled(_) | Blocks::Q4KTiled(_))
    }

    /// The length of the buffer the tasks write: `(group, row, 16)` for tiles, `(n, m)` (each
    /// task owns whole weight rows) for the row layout.
    fn work_len(&self, m: usize) -> usize {
        if self.is_tiled() { self.rows.div_ceil(TILE) * TILE * m } else { self.rows * m }
    }

    /// This matrix's tasks over `buf`: enough to balance the threads, few enough to keep the
    /// overhead low.
    fn split_work<'a>(
        &'a self,
        isa: Isa,
        m: usize,
        threads: usize,
        buf: &'a mut [f32],
        work: &mut Vec<Work<'a>>,
    ) {
        match &self.blocks {
            #[cfg(target_arch = "x86_64")]
            Blocks::Q8Tiled(tiles) => split_tiles(tiles, self, m, threads, buf, work, |tiles, nb, out| {
                Work::Q8Tiles { tiles, nb, out }
            }),
            #[cfg(target_arch = "x86_64")]
            Blocks::Q4KTiled(tiles) => split_tiles(tiles, self, m, threads, buf, work, |tiles, nb, out| {
                Work::Q4KTiles { tiles, nb, out }
            }),
            #[cfg(not(target_arch = "x86_64"))]
            Blocks::Q8Tiled(_) | Blocks::Q4KTiled(_) => unreachable!("tiles are only built for VNNI"),
            Blocks::Q8(_) | Blocks::Q4K(_) => {
                let n = self.rows;
                let per_task = (n / (threads * 16)).clamp(8, 512).min(n).max(1);
                for (t, out) in buf.chunks_mut(per_task * m).enumerate() {
                    work.push(Work::Rows { q: self, isa, first: t * per_task, out });
                }
            }
        }
    }

    /// The tasks' buffer as `(m, rows)` row-major.
    fn unpack(&self, buf: Vec<f32>, m: usize) -> Vec<f32> {
        let n = self.rows;
        if m == 1 && (!self.is_tiled() || n.is_multiple_of(TILE)) {
            return buf;
        }
        let mut out = vec![0f32; m * n];
        if self.is_tiled() {
            for g in 0..n.div_ceil(TILE) {
                let (c0, len) = (g * TILE, TILE.min(n - g * TILE));
                for r in 0..m {
                    out[r * n + c0..r * n + c0 + len].copy_from_slice(&buf[(g * m + r) * TILE..][..len]);
                }
            }
        } else {
            for (c, col) in buf.chunks_exact(m).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    out[r * n + c] = v;
                }
            }
        }
        out
    }

    /// Dot products of weight row `w` with activation rows `r0..r0 + out.len()`.
    fn row_dots(&self, isa: Isa, w: usize, act: &Act, r0: usize, out: &mut [f32]) {
        let mut r = 0;
        while r < out.len() {
            let take = if out.len() - r >= 4 { 4 } else { 1 };
            let rows = r0 + r..r0 + r + take;
            let o = &mut out[r..r + take];
            match &self.blocks {
                Blocks::Q8(b) => {
                    let per = self.cols / QK8;
                    let wrow = &b[w * per..(w + 1) * per];
                    match take {
                        4 => dispatch_q8::<4>(isa, wrow, act, rows, o),
                        _ => dispatch_q8::<1>(isa, wrow, act, rows, o),
                    }
                }
                Blocks::Q4K(b) => {
                    let per = self.cols / QKK;
                    let wrow = &b[w * per..(w + 1) * per];
                    match take {
                        4 => dispatch_q4k::<4>(isa, wrow, act, rows, o),
                        _ => dispatch_q4k::<1>(isa, wrow, act, rows, o),
                    }
                }
                Blocks::Q8Tiled(_) | Blocks::Q4KTiled(_) => unreachable!("tiled matrices run run_tiles"),
            }
            r += take;
        }
    }
}

/// Activation rows quantized to 8 bits in blocks of 32: `qs` row-major, one scale and one
/// `scale * sum(q)` per block.
pub(crate) struct Act {
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<f32>,
    /// `sum(q)` per block, as an integer (the tiled kernel's +128 correction).
    isum: Vec<i32>,
}

impl Act {
    fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        let blocks = m * cols / QK8;
        let mut qs = vec![0i8; m * cols];
        let mut d = vec![0f32; blocks];
        let mut sum = vec![0f32; blocks];
        let mut isum = vec![0i32; blocks];
        for ((((xb, qb), db), sb), ib) in x
            .chunks_exact(QK8)
            .zip(qs.chunks_exact_mut(QK8))
            .zip(d.iter_mut())
            .zip(sum.iter_mut())
            .zip(isum.iter_mut())
        {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                // Round half away from zero without a libm call (baseline x86-64 has no
                // SSE4.1 `roundps`): |v * inv| <= 127, so the i32 truncation is exact.
                let t = v * inv;
                *q = (t + 0.5f32.copysign(t)) as i32 as i8;
                s += i32::from(*q);
            }
            *db = scale;
            *sb = scale * s as f32;
            *ib = s;
        }
        Act { cols, qs, d, sum, isum }
    }

    fn row_qs(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    fn row_d(&self, r: usize) -> &[f32] {
        let per = self.cols / QK8;
        &self.d[r * per..(r + 1) * per]
    }

    fn row_sum(&self, r: usize) -> &[f32] {
        let per = self.cols / QK8;
        &self.sum[r * per..(r + 1) * per]
    }

    fn row_isum(&self, r: usize) -> &[i32] {
        let per = self.cols / QK8;
        &self.isum[r * per..(r + 1) * per]
    }
}

/// One task of a (group) matmul: some output columns of one matrix.
enum Work<'a> {
    /// Groups of 16 weight rows in q8_0 tiles: `out` is `(group, row, 16)`.
    #[cfg(target_arch = "x86_64")]
    Q8Tiles { tiles: &'a [Q8Tile], nb: usize, out: &'a mut [f32] },
    /// The same in q4_k tiles.
    #[cfg(target_arch = "x86_64")]
    Q4KTiles { tiles: &'a [Q4KTile], nb: usize, out: &'a mut [f32] },
    /// Weight rows `first..` of the row layout: `out` is `(row, m)`.
    Rows { q: &'a QMatrix, isa: Isa, first: usize, out: &'a mut [f32] },
}

/// Splits a tiled matrix's buffer into tasks of whole 16-row groups.
#[cfg(target_arch = "x86_64")]
fn split_tiles<'a, T: Tile>(
    tiles: &'a [T],
    q: &QMatrix,
    m: usize,
    threads: usize,
    buf: &'a mut [f32],
    work: &mut Vec<Work<'a>>,
    task: fn(&'a [T], usize, &'a mut [f32]) -> Work<'a>,
) {
    let nb = q.cols / T::VALUES;
    let groups = q.rows.div_ceil(TILE);
    let per_task = (groups / (threads * 16)).clamp(1, 64);
    let mut rest = tiles;
    for out in buf.chunks_mut(per_task * m * TILE) {
        let (mine, after) = rest.split_at(out.len() / (m * TILE) * nb);
        rest = after;
        work.push(task(mine, nb, out));
    }
}

impl Work<'_> {
    fn run(self, act: &Act, m: usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Work::Q8Tiles { tiles, nb, out } => run_tiles(tiles, nb, act, m, out),
            #[cfg(target_arch = "x86_64")]
            Work::Q4KTiles { tiles, nb, out } => run_tiles(tiles, nb, act, m, out),
            Work::Rows { q, isa, first, out } => {
                // Tiles of activation rows stay in L2 while the task's weight rows pass over them.
                const ROWS: usize = 64;
                for r0 in (0..m).step_by(ROWS) {
                    let r1 = (r0 + ROWS).min(m);
                    for (i, col) in out.chunks_exact_mut(m).enumerate() {
                        q.row_dots(isa, first + i, act, r0, &mut col[r0..r1]);
                    }
                }
            }
        }
    }
}

/// Every activation row against each 16-row group of `tiles` (`nb` tiles per group).
#[cfg(target_arch = "x86_64")]
fn run_tiles<T: Tile>(tiles: &[T], nb: usize, act: &Act, m: usize, out: &mut [f32]) {
    for (gt, gbuf) in tiles.chunks_exact(nb).zip(out.chunks_exact_mut(m * TILE)) {
        let mut r = 0;
        while r < m {
            let take = if m - r >= 4 { 4 } else { 1 };
            let o = &mut gbuf[r * TILE..(r + take) * TILE];
            match take {
                4 => T::rows::<4>(gt, act, r, o),
                _ => T::rows::<1>(gt, act, r, o),
            }
            r += take;
        }
    }
}

/// Which kernel family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Vnni => "avx512-vnni",
        }
    }

    /// Every kernel this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2_ok() {
                v.push(Isa::Avx2);
            }
            if vnni_ok() {
                v.push(Isa::Vnni);
            }
        }
        v
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_ok() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
fn vnni_ok() -> bool {
    avx2_ok()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
}

/// The fastest kernel this CPU runs, unless PIPEHOST_QUANT_KERNEL names one.
pub(crate) fn kernel() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let available = Isa::available();
        let wanted = std::env::var("PIPEHOST_QUANT_KERNEL").unwrap_or_default();
        if let Some(isa) = available
            .iter()
            .find(|i| i.name() == wanted || (wanted.starts_with("vnni") && i.name() == "avx512-vnni"))
        {
            return *isa;
        }
        *available.last().expect("scalar is always there")
    })
}

fn dispatch_q8<const R: usize>(
    isa: Isa,
    w: &[Q8Block],
    act: &Act,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let a: [&[i8]; R] = std::array::from_fn(|i| act.row_qs(rows.start + i));
    let d: [&[f32]; R] = std::array::from_fn(|i| act.row_d(rows.start + i));
    let res = match isa {
        Isa::Scalar => q8_scalar::<R>(w, a, d),
        // SAFETY: the CPU has the features (checked when the Isa was chosen).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::q8_avx2::<R>(w, a, d) },
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni => unsafe { x86::q8_vnni::<R>(w, a, d) },
    };
    out.copy_from_slice(&res);
}

/// A tile layout: 16 weight rows by `VALUES` columns, run by a 512-bit VNNI kernel.
#[cfg(target_arch = "x86_64")]
trait Tile: Sync {
    /// Weight values per tile along a row.
    const VALUES: usize;
    /// `R` activation rows from `r0` against one group of 16 weight rows: `out` is `(R, 16)`.
    fn rows<const R: usize>(tiles: &[Self], act: &Act, r0: usize, out: &mut [f32])
    where
        Self: Sized;
}

#[cfg(target_arch = "x86_64")]
impl Tile for Q8Tile {
    const VALUES: usize = QK8;

    fn rows<const R: usize>(tiles: &[Self], act: &Act, r0: usize, out: &mut [f32]) {
        let a: [&[i8]; R] = std::array::from_fn(|i| act.row_qs(r0 + i));
        let d: [&[f32]; R] = std::array::from_fn(|i| act.row_d(r0 + i));
        let s: [&[i32]; R] = std::array::from_fn(|i| act.row_isum(r0 + i));
        // SAFETY: tiled matrices are only built when the CPU has AVX-512 VNNI (`kernel()`), or
        // by tests that check `Isa::available()` first.
        let res = unsafe { x86::q8_tiles_vnni::<R>(tiles, a, d, s) };
        for (o, r) in out.chunks_exact_mut(TILE).zip(&res) {
            o.copy_from_slice(r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Tile for Q4KTile {
    const VALUES: usize = QKK;

    fn rows<const R: usize>(tiles: &[Self], act: &Act, r0: usize, out: &mut [f32]) {
        let a: [&[i8]; R] = std::array::from_fn(|i| act.row_qs(r0 + i));
        let d: [&[f32]; R] = std::array::from_fn(|i| act.row_d(r0 + i));
        let s: [&[f32]; R] = std::array::from_fn(|i| act.row_sum(r0 + i));
        // SAFETY: as for `Q8Tile`.
        let res = unsafe { x86::q4k_tiles_vnni::<R>(tiles, a, d, s) };
        for (o, r) in out.chunks_exact_mut(TILE).zip(&res) {
            o.copy_from_slice(r);
        }
    }
}

impl Q4KTile {
    fn zero() -> Self {
        Q4KTile {
            d: [0.0; TILE],
            dmin: [0.0; TILE],
            sc: [[0; TILE]; 8],
            m: [[0; TILE]; 8],
            qs: [0; QKK / 2 * TILE],
        }
    }

    /// Row `r` from one ggml `BlockQ4K`: its scales, 12 packed scale bytes and 128 quant bytes.
    fn set_row(&mut self, r: usize, d: f32, dmin: f32, scales: &[u8], qs: &[u8]) {
        self.d[r] = d;
        self.dmin[r] = dmin;
        for j in 0..8 {
            (self.sc[j][r], self.m[j][r]) = scale_min_k4(j, scales);
        }
        self.set_quants(r, qs);
    }

    /// ggml's byte `32 * p + i` (value `i` of sub-blocks `2p` and `2p + 1`) goes to group
    /// `i / 4`, lane `4 * r + i % 4` of pair `p`.
    fn set_quants(&mut self, r: usize, qs: &[u8]) {
        for (k, &q) in qs.iter().enumerate() {
            let (p, i) = (k / 32, k % 32);
            self.qs[512 * p + 64 * (i / 4) + 4 * r + i % 4] = q;
        }
    }
}

fn dispatch_q4k<const R: usize>(
    isa: Isa,
    w: &[Q4KBlock],
    act: &Act,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let a: [&[i8]; R] = std::array::from_fn(|i| act.row_qs(rows.start + i));
    let d: [&[f32]; R] = std::array::from_fn(|i| act.row_d(rows.start + i));
    let s: [&[f32]; R] = std::array::from_fn(|i| act.row_sum(rows.start + i));
    let res = match isa {
        Isa::Scalar => q4k_scalar::<R>(w, a, d, s),
        // SAFETY: the CPU has the features (checked when the Isa was chosen).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::q4k_avx2::<R>(w, a, d, s) },
        #[cfg(target_arch = "x86_64")]
        Isa::Vnni => unsafe { x86::q4k_vnni::<R>(w, a, d, s) },
    };
    out.copy_from_slice(&res);
}

/// Reference: `sum_b w.d * a.d * sum_i w.q * a.q` in plain Rust.
fn q8_scalar<const R: usize>(w: &[Q8Block], a: [&[i8]; R], d: [&[f32]; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        let mut acc = 0f32;
        for (b, blk) in w.iter().enumerate() {
            let qa = &a[r][b * QK8..(b + 1) * QK8];
            let s: i32 = blk.qs.iter().zip(qa).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum();
            acc += blk.d * d[r][b] * s as f32;
        }
        out[r] = acc;
    }
    out
}

/// Reference: per sub-block `j`, `d * sc[j] * a.d * sum(q * a.q) - dmin * m[j] * a.d * sum(a.q)`.
fn q4k_scalar<const R: usize>(w: &[Q4KBlock], a: [&[i8]; R], d: [&[f32]; R], s: [&[f32]; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        let mut acc = 0f32;
        for (b, blk) in w.iter().enumerate() {
            for j in 0..8 {
                let qs = &blk.qs[32 * (j / 2)..32 * (j / 2) + 32];
                let qa = &a[r][b * QKK + 32 * j..b * QKK + 32 * j + 32];
                let dot: i32 = qs
                    .iter()
                    .zip(qa)
                    .map(|(&q, &y)| i32::from(if j % 2 == 0 { q & 0xF } else { q >> 4 }) * i32::from(y))
                    .sum();
                let sub = b * 8 + j;
                acc += blk.d * f32::from(blk.sc[j]) * d[r][sub] * dot as f32
                    - blk.dmin * f32::from(blk.m[j]) * s[r][sub];
            }
        }
        out[r] = acc;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The same two kernels for AVX2+FMA (`maddubs` + `madd`) and for AVX-512 VNNI on 256-bit
    //! registers (`vpdpbusd`), from one macro so they cannot drift apart.

    use std::arch::x86_64::*;

    use super::{Q4KBlock, Q8Block, QK8, QKK};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `u8 x i8` products summed in fours into 8 i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn dot_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    macro_rules! kernels {
        ($q8:ident, $q4k:ident, $dot:ident, $features:literal) => {
            /// # Safety
            /// The CPU must have the enabled features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q8<const R: usize>(
                w: &[Q8Block],
                a: [&[i8]; R],
                d: [&[f32]; R],
            ) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, blk) in w.iter().enumerate() {
                    // SAFETY: 32 bytes of the block and of each activation row's block b.
                    let wq = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().cast()) };
                    let wabs = _mm256_sign_epi8(wq, wq);
                    for r in 0..R {
                        let aq = unsafe { _mm256_loadu_si256(a[r][b * QK8..].as_ptr().cast()) };
                        let p = $dot(wabs, _mm256_sign_epi8(aq, wq));
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(blk.d * d[r][b]), acc[r]);
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]))
            }

            /// # Safety
            /// The CPU must have the enabled features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q4k<const R: usize>(
                w: &[Q4KBlock],
                a: [&[i8]; R],
                d: [&[f32]; R],
                s: [&[f32]; R],
            ) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [0f32; R];
                let nib = _mm256_set1_epi8(0x0F);
                for (b, blk) in w.iter().enumerate() {
                    for j in 0..4 {
                        // SAFETY: 32 of the block's 128 quant bytes.
                        let q = unsafe { _mm256_loadu_si256(blk.qs[32 * j..].as_ptr().cast()) };
                        let lo = _mm256_and_si256(q, nib);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), nib);
                        let (s0, s1) =
                            (blk.d * f32::from(blk.sc[2 * j]), blk.d * f32::from(blk.sc[2 * j + 1]));
                        let sub = b * 8 + 2 * j;
                        for r in 0..R {
                            let at = b * QKK + 64 * j;
                            // SAFETY: 64 activation bytes of super-block b.
                            let a0 = unsafe { _mm256_loadu_si256(a[r][at..].as_ptr().cast()) };
                            let a1 = unsafe { _mm256_loadu_si256(a[r][at + 32..].as_ptr().cast()) };
                            let p0 = _mm256_cvtepi32_ps($dot(lo, a0));
                            let p1 = _mm256_cvtepi32_ps($dot(hi, a1));
                            acc[r] = _mm256_fmadd_ps(p0, _mm256_set1_ps(s0 * d[r][sub]), acc[r]);
                            acc[r] = _mm256_fmadd_ps(p1, _mm256_set1_ps(s1 * d[r][sub + 1]), acc[r]);
                        }
                    }
                    for r in 0..R {
                        let mut m = 0f32;
                        for j in 0..8 {
                            m += f32::from(blk.m[j]) * s[r][b * 8 + j];
                        }
                        mins[r] += blk.dmin * m;
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]) - mins[r])
            }
        };
    }

    /// q8_0 [`super::Q8Tile`]s with 512-bit `vpdpbusd`: per block and activation row, 8
    /// instructions give 16 output columns' integer dots; one FMA scales them.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q8_tiles_vnni<const R: usize>(
        tiles: &[super::Q8Tile],
        a: [&[i8]; R],
        d: [&[f32]; R],
        isum: [&[i32]; R],
    ) -> [[f32; 16]; R] {
        let mut facc = [_mm512_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            let mut iacc = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                // SAFETY: 64 of the tile's 512 quant bytes.
                let w = unsafe { _mm512_loadu_si512(t.qs[64 * g..].as_ptr().cast()) };
                for r in 0..R {
                    // SAFETY: 4 bytes inside activation block b of row r.
                    let x = unsafe { a[r][b * QK8 + 4 * g..].as_ptr().cast::<i32>().read_unaligned() };
                    iacc[r] = _mm512_dpbusd_epi32(iacc[r], w, _mm512_set1_epi32(x));
                }
            }
            // SAFETY: the tile's 16 scales.
            let wd = unsafe { _mm512_loadu_ps(t.d.as_ptr()) };
            for r in 0..R {
                let dots = _mm512_sub_epi32(iacc[r], _mm512_set1_epi32(128 * isum[r][b]));
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(d[r][b]));
                facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots), scale, facc[r]);
            }
        }
        let mut out = [[0f32; 16]; R];
        for r in 0..R {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
        }
        out
    }

    /// q4_k [`super::Q4KTile`]s with 512-bit `vpdpbusd`: per pair of sub-blocks and activation
    /// row, 16 instructions give 16 output columns' integer dots for both sub-blocks (low and
    /// high nibbles of the same 8 loads); each sub-block is then scaled by its per-row
    /// `d * sc` and its minimum `dmin * m * sum(a)` taken off.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q4k_tiles_vnni<const R: usize>(
        tiles: &[super::Q4KTile],
        a: [&[i8]; R],
        d: [&[f32]; R],
        sum: [&[f32]; R],
    ) -> [[f32; 16]; R] {
        let nib = _mm512_set1_epi8(0x0F);
        let mut facc = [_mm512_setzero_ps(); R];
        for (b, t) in tiles.iter().enumerate() {
            // SAFETY: the tile's 16 scales and 16 minimum scales.
            let (td, tmin) = unsafe { (_mm512_loadu_ps(t.d.as_ptr()), _mm512_loadu_ps(t.dmin.as_ptr())) };
            for p in 0..4 {
                let mut lo_acc = [_mm512_setzero_si512(); R];
                let mut hi_acc = [_mm512_setzero_si512(); R];
                for g in 0..8 {
                    // SAFETY: 64 of the tile's 2048 quant bytes.
                    let w = unsafe { _mm512_loadu_si512(t.qs[512 * p + 64 * g..].as_ptr().cast()) };
                    let lo = _mm512_and_si512(w, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
                    for r in 0..R {
                        let at = b * super::QKK + 64 * p + 4 * g;
                        // SAFETY: 4 bytes inside super-block b of activation row r (sub-blocks
                        // 2p and 2p + 1 start 64 * p and 64 * p + 32 bytes in).
                        let (x0, x1) = unsafe {
                            let row = a[r].as_ptr();
                            (
                                row.add(at).cast::<i32>().read_unaligned(),
                                row.add(at + 32).cast::<i32>().read_unaligned(),
                            )
                        };
                        lo_acc[r] = _mm512_dpbusd_epi32(lo_acc[r], lo, _mm512_set1_epi32(x0));
                        hi_acc[r] = _mm512_dpbusd_epi32(hi_acc[r], hi, _mm512_set1_epi32(x1));
                    }
                }
                let (j0, j1) = (2 * p, 2 * p + 1);
                let (dsc0, dsc1) = (_mm512_mul_ps(td, widen(&t.sc[j0])), _mm512_mul_ps(td, widen(&t.sc[j1])));
                let (dm0, dm1) = (_mm512_mul_ps(tmin, widen(&t.m[j0])), _mm512_mul_ps(tmin, widen(&t.m[j1])));
                let sub = b * 8 + j0;
                for r in 0..R {
                    let s0 = _mm512_mul_ps(dsc0, _mm512_set1_ps(d[r][sub]));
                    let s1 = _mm512_mul_ps(dsc1, _mm512_set1_ps(d[r][sub + 1]));
                    facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo_acc[r]), s0, facc[r]);
                    facc[r] = _mm512_fnmadd_ps(dm0, _mm512_set1_ps(sum[r][sub]), facc[r]);
                    facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi_acc[r]), s1, facc[r]);
                    facc[r] = _mm512_fnmadd_ps(dm1, _mm512_set1_ps(sum[r][sub + 1]), facc[r]);
                }
            }
        }
        let mut out = [[0f32; 16]; R];
        for r in 0..R {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
        }
        out
    }

    /// 16 unsigned bytes widened to 16 floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn widen(v: &[u8; 16]) -> __m512 {
        // SAFETY: 16 bytes.
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(v.as_ptr().cast()) }))
    }

    kernels!(q8_avx2, q4k_avx2, dot_avx2, "avx2,fma");
    kernels!(q8_vnni, q4k_vnni, dot_vnni, "avx2,fma,avx512vnni,avx512vl");
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = super::super::sampling::Rng::new(seed);
        (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
    }

    /// f64 `x @ W^T` of the dequantized weights and the quantized activations: what every
    /// kernel approximates, so kernels are compared with this and with each other.
    fn exact(q: &QMatrix, x: &[f32], m: usize) -> Vec<f64> {
        let act = Act::quantize(x, m, q.cols);
        let mut w = vec![0f32; q.cols];
        let mut out = vec![0f64; m * q.rows];
        for n in 0..q.rows {
            q.dequantize_row(n, &mut w);
            for r in 0..m {
                let (qs, d) = (act.row_qs(r), act.row_d(r));
                out[r * q.rows + n] =
                    (0..q.cols).map(|i| f64::from(w[i]) * f64::from(qs[i]) * f64::from(d[i / QK8])).sum();
            }
        }
        out
    }

    /// The row layout (every kernel reads it).
    fn rows_of(w: &Tensor, kind: QuantKind) -> QMatrix {
        let (rows, cols) = w.dims2().unwrap();
        QMatrix::from_ggml_rows(kind, rows, cols, &QMatrix::quantize_ggml(w, kind).unwrap()).unwrap()
    }

    /// The matrix with every kernel, plus the tiled layout where the CPU runs it.
    fn variants(rows: &QMatrix) -> Vec<(Isa, QMatrix)> {
        #[allow(unused_mut)]
        let mut v: Vec<(Isa, QMatrix)> = Isa::available().into_iter().map(|i| (i, rows.clone())).collect();
        #[cfg(target_arch = "x86_64")]
        if Isa::available().contains(&Isa::Vnni) {
            v.push((Isa::Vnni, rows.clone().tiled()));
        }
        v
    }

    #[test]
    fn kernels_agree_with_the_reference_on_random_inputs() {
        for kind in [QuantKind::Q8_0, QuantKind::Q4K] {
            for (rows, cols, m) in [(37, 512, 1), (16, 256, 7), (9, 768, 13)] {
                let w = Tensor::from_vec(random(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
                let q = rows_of(&w, kind);
                assert_eq!(q.kind(), kind);
                let x = random(m * cols, 2);
                let want = exact(&q, &x, m);
                for (isa, q) in variants(&q) {
                    let got = q.matmul_with(isa, &x, m);
                    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * (1.0 + e.abs()) + 1e-5 * cols as f64;
                        assert!(((g as f64) - e).abs() <= tol, "{kind:?} {} [{i}]: {g} vs {e}", isa.name());
                    }
                }
            }
        }
    }

    /// The tiles built at load straight from ggml bytes (`from_ggml`) equal the test's
    /// regrouping of the row layout (`tiled`), which the kernel tests check.
    #[test]
    fn tiles_from_ggml_bytes_equal_the_regrouped_rows() {
        #[cfg(target_arch = "x86_64")]
        if Isa::available().contains(&Isa::Vnni) {
            for kind in [QuantKind::Q8_0, QuantKind::Q4K] {
                let (rows, cols) = (37, 512);
                let w = Tensor::from_vec(random(rows * cols, 9), (rows, cols), &Device::Cpu).unwrap();
                let bytes = QMatrix::quantize_ggml(&w, kind).unwrap();
                let loaded = match kind {
                    QuantKind::Q8_0 => QMatrix::tiles_from_ggml(rows, cols, &bytes),
                    QuantKind::Q4K => QMatrix::q4k_tiles_from_ggml(rows, cols, &bytes),
                }
                .unwrap();
                let regrouped = rows_of(&w, kind).tiled();
                let x = random(5 * cols, 10);
                assert_eq!(
                    loaded.matmul_with(Isa::Vnni, &x, 5),
                    regrouped.matmul_with(Isa::Vnni, &x, 5),
                    "{kind:?}"
                );
                let err = QMatrix::q4k_tiles_from_ggml(rows, cols, &bytes[1..]).unwrap_err();
                assert!(err.to_string().contains("rows of 512"), "{err}");
            }
        }
    }

    /// A layer's q, k and v (or gate and up) in one parallel region give each matrix the same
    /// bits as its own matmul, whatever kinds, layouts and sizes run beside it.
    #[test]
    fn a_group_matmul_gives_each_matrix_its_own_bits() {
        let cols = 512;
        let x = random(6 * cols, 11);
        let mats: Vec<(QuantKind, usize)> =
            vec![(QuantKind::Q4K, 40), (QuantKind::Q8_0, 16), (QuantKind::Q4K, 7)];
        let rows: Vec<QMatrix> = mats
            .iter()
            .enumerate()
            .map(|(i, &(kind, n))| {
                rows_of(
                    &Tensor::from_vec(random(n * cols, 20 + i as u64), (n, cols), &Device::Cpu).unwrap(),
                    kind,
                )
            })
            .collect();
        let layouts: Vec<Vec<(Isa, QMatrix)>> = rows.iter().map(variants).collect();
        for v in 0..layouts[0].len() {
            let (isa, group): (Isa, Vec<&QMatrix>) =
                (layouts[0][v].0, layouts.iter().map(|l| &l[v].1).collect());
            for m in [1, 6] {
                let together = QMatrix::matmul_group_with(isa, &group, &x[..m * cols], m);
                assert_eq!(together.len(), group.len());
                for (i, (q, got)) in group.iter().zip(&together).enumerate() {
                    assert_eq!(
                        *got,
                        q.matmul_with(isa, &x[..m * cols], m),
                        "{} matrix {i}, {m} rows",
                        isa.name()
                    );
                }
            }
        }
        assert!(QMatrix::matmul_group(&[], &x, 6).is_empty());
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_rows_run_beside_it() {
        let (rows, cols) = (24, 512);
        let w = Tensor::from_vec(random(rows * cols, 3), (rows, cols), &Device::Cpu).unwrap();
        let x = random(9 * cols, 4);
        for kind in [QuantKind::Q8_0, QuantKind::Q4K] {
            let q = rows_of(&w, kind);
            for (isa, q) in variants(&q) {
                let all = q.matmul_with(isa, &x, 9);
                for r in 0..9 {
                    let one = q.matmul_with(isa, &x[r * cols..(r + 1) * cols], 1);
                    assert_eq!(one, all[r * rows..(r + 1) * rows], "{kind:?} {} row {r}", isa.name());
                }
            }
        }
    }

    #[test]
    fn quantized_matmul_is_close_to_the_dense_one() {
        let (rows, cols, m) = (64, 1024, 3);
        let w = random(rows * cols, 5);
        let x = random(m * cols, 6);
        let wt = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        for (kind, rel) in [(QuantKind::Q8_0, 0.01), (QuantKind::Q4K, 0.08)] {
            let q = QMatrix::quantize(&wt, kind).unwrap();
            let got = q.matmul(&x, m);
            let mut err = 0f64;
            let mut norm = 0f64;
            for r in 0..m {
                for n in 0..rows {
                    let e: f64 =
                        (0..cols).map(|i| f64::from(w[n * cols + i]) * f64::from(x[r * cols + i])).sum();
                    err += (f64::from(got[r * rows + n]) - e).powi(2);
                    norm += e * e;
                }
            }
            let rel_err = (err / norm).sqrt();
            eprintln!("{kind:?}: relative RMS error {rel_err:.4}");
            assert!(rel_err < rel, "{kind:?}: relative error {rel_err}");
        }
    }

    #[test]
    fn unpacked_blocks_dequantize_like_candle() {
        let (rows, cols) = (5, 512);
        let w = Tensor::from_vec(random(rows * cols, 8), (rows, cols), &Device::Cpu).unwrap();
        for kind in [QuantKind::Q8_0, QuantKind::Q4K] {
            let theirs = QTensor::quantize(&w, kind.ggml()).unwrap().dequantize(&Device::Cpu).unwrap();
            let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut ours = vec![0f32; cols];
            for (_, q) in variants(&rows_of(&w, kind)) {
                for r in 0..rows {
                    q.dequantize_row(r, &mut ours);
                    for (i, (a, b)) in ours.iter().zip(&theirs[r * cols..]).enumerate() {
                        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{kind:?} [{r}, {i}]: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn falls_back_for_rows_that_are_not_whole_blocks() {
        assert_eq!(QuantKind::Q4K.for_cols(512), Some(QuantKind::Q4K));
        assert_eq!(QuantKind::Q4K.for_cols(64), Some(QuantKind::Q8_0));
        assert_eq!(QuantKind::Q8_0.for_cols(48), None);
    }
}
