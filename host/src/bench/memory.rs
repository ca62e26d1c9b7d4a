//! `pipehost bench memory`: the machine's memory read bandwidth, the ceiling for decode speed
//! (a decode step reads every weight once). A buffer much larger than the caches is read end
//! to end by the same number of threads the model uses, each summing its own part as four
//! streams, on huge pages like the weights; the median over runs is the figure
//! docs/performance.md divides decode bytes/s by.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use rayon::prelude::*;

use super::model::median;

/// What `pipehost bench memory` runs (its flags, parsed in `cli/bench.rs`).
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Buffer size in MiB.
    pub size_mib: usize,
    /// Measured runs after one warm-up.
    pub runs: usize,
    /// Print one JSON object.
    pub json: bool,
}

/// Sums one part with eight independent integer lanes, so the loop is vectorised without
/// reordering anything and the CPU is never the limit.
fn sum_lanes(part: &[u64]) -> u64 {
    let (chunks, tail) = part.as_chunks::<8>();
    let mut acc = [0u64; 8];
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].wrapping_add(c[l]);
        }
    }
    acc.iter().chain(tail).fold(0u64, |a, &b| a.wrapping_add(b))
}

/// One sequential stream per core leaves bandwidth unused (the hardware prefetcher keeps
/// several streams in flight; the model's kernels read four weight rows per pass for that
/// reason), so each thread reads four quarters of its part in lockstep, a cache line of each
/// at a time.
fn sum_part(part: &[u64]) -> u64 {
    let quarter = part.len() / 4 / 8 * 8;
    let [s0, s1, s2, s3]: [&[[u64; 8]]; 4] =
        std::array::from_fn(|i| part[i * quarter..(i + 1) * quarter].as_chunks::<8>().0);
    let mut acc = [[0u64; 8]; 4];
    for (((a, b), c), d) in s0.iter().zip(s1).zip(s2).zip(s3) {
        for (s, line) in [a, b, c, d].into_iter().enumerate() {
            for l in 0..8 {
                acc[s][l] = acc[s][l].wrapping_add(line[l]);
            }
        }
    }
    acc.iter().flatten().fold(sum_lanes(&part[4 * quarter..]), |x, &y| x.wrapping_add(y))
}

/// One read of the whole buffer by `threads` threads; returns (GB/s, checksum).
fn read_once(buffer: &[u64], threads: usize) -> (f64, u64) {
    let part = buffer.len().div_ceil(threads);
    let started = Instant::now();
    let sum = buffer.par_chunks(part).map(sum_part).reduce(|| 0, u64::wrapping_add);
    let seconds = started.elapsed().as_secs_f64();
    (std::mem::size_of_val(buffer) as f64 / seconds / 1e9, sum)
}

pub fn run(args: &MemoryOptions) -> Result<ExitCode> {
    if args.runs == 0 || args.size_mib < 64 {
        bail!("need --runs >= 1 and --size-mib >= 64 (the buffer must be far larger than the caches)");
    }
    let words = args.size_mib * 1024 * 1024 / 8;
    // Written with distinct values, so every page is really backed (not the shared zero page),
    // on huge pages like the model's weights (`PIPEHOST_HUGE_PAGES=0`: 4 KB pages, for both).
    let mut buffer: Vec<u64> = crate::model::huge_page_vec(words);
    buffer.extend(0..words as u64);
    let want = sum_lanes(&buffer);
    let threads = rayon::current_num_threads();
    let mut all = Vec::new();
    let mut one = Vec::new();
    for run in 0..=args.runs {
        let (gbps, sum) = read_once(&buffer, threads);
        let (gbps1, sum1) = read_once(&buffer, 1);
        if sum != want || sum1 != want {
            bail!("the buffer read back a wrong sum");
        }
        if run == 0 {
            continue; // warm-up
        }
        eprintln!("run {run}: {gbps:.1} GB/s on {threads} threads, {gbps1:.1} GB/s on one");
        all.push(gbps);
        one.push(gbps1);
    }
    let (all, one) = (median(all), median(one));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "size_mib": args.size_mib,
                "threads": threads,
                "runs": args.runs,
                "read_gb_per_s": (all * 100.0).round() / 100.0,
                "read_gb_per_s_one_thread": (one * 100.0).round() / 100.0,
            })
        );
    } else {
        println!(
            "memory read bandwidth ({} MiB, median of {} runs): {all:.1} GB/s on {threads} threads, \
             {one:.1} GB/s on one",
            args.size_mib, args.runs
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four-stream read adds every word exactly once, whatever is left over at the end.
    #[test]
    fn four_streams_sum_every_word_once() {
        for len in [0u64, 1, 31, 32, 33, 4096, 10_007] {
            let words: Vec<u64> = (0..len).map(|i| i * i + 7).collect();
            let want = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            assert_eq!(sum_part(&words), want, "{len} words");
            assert_eq!(sum_lanes(&words), want, "{len} words");
        }
    }
}
