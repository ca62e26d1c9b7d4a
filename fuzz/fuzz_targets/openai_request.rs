//! `POST /v1/chat/completions` bodies: arbitrary bytes through the server's JSON body reader
//! into its `ChatRequest` and the mapping to a pipeline `RunRequest` (messages → history and
//! input variable, sampling fields validated), via `pipehost::server::parse_chat_request`.
//! Must never panic; errors must render as the API's JSON error body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match pipehost::server::parse_chat_request(data, "input") {
        Ok(request) => {
            assert!(request.vars.contains_key("input"), "no input variable in {request:?}");
        }
        Err(e) => {
            let body = e.body_json();
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "bad error body {body}");
        }
    }
});
