//! The `openai` backend's reader of an upstream's server-sent events: arbitrary bytes, split at
//! fuzzer-chosen points, through `SseDecoder` and each event through `parse_chunk`. The events
//! must be the same however the bytes were split (the network splits them anywhere), nothing
//! may panic, and a refused stream must be refused whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipehost::backend::sse::{SseDecoder, parse_chunk};

fn decode(parts: &[&[u8]]) -> Result<Vec<String>, String> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for part in parts {
        decoder.push(part, &mut events).map_err(|e| e.to_string())?;
    }
    decoder.finish(&mut events);
    Ok(events)
}

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (bytes, cuts) = input;
    let whole = decode(&[&bytes]);
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c as usize % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut at = 0;
    for cut in cuts {
        parts.push(&bytes[at..cut]);
        at = cut;
    }
    parts.push(&bytes[at..]);
    assert_eq!(decode(&parts), whole, "split at {parts:?}");
    for data in whole.into_iter().flatten() {
        if let Ok(chunk) = parse_chunk(&data) {
            assert!(chunk.deltas.iter().all(|d| !d.is_empty()));
        }
    }
});
