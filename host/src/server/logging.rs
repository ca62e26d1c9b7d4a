//! The request log, server side: before a run, ask the executor for everything the log keeps
//! (the raw text, the prompt's messages, each stage's output) and pin the seed; after it, queue
//! the record for the store and strip from the response what the client did not ask for.

use std::collections::BTreeMap;

use serde_json::json;

use super::AppState;
use super::experiments::RunTags;
use crate::backend::{ChatMessage, GenerationParams};
use crate::pipeline::{Pipeline, RunRecord, RunRequest};
use crate::store::{ResponseRow, now_ms};

/// What `--log-bodies` keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogBodies {
    /// Everything: variables, messages, raw, final and per-stage texts.
    #[default]
    Full,
    /// Everything but texts: ids, versions, parameters, timings, usage, finish reasons.
    None,
}

/// A run on its way to the log.
pub(crate) struct PendingLog {
    tags: RunTags,
    stream: bool,
    created_ms: i64,
    vars: BTreeMap<String, String>,
    history: Vec<ChatMessage>,
    params: GenerationParams,
    client_raw: bool,
    client_trace: bool,
}

/// 53 bits: the logged seed survives JSON readers that hold numbers as doubles (JavaScript).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() >> 11
}

impl AppState {
    /// With a store: asks the run for what the log keeps and fixes the seed (so the logged
    /// parameters reproduce the answer). Without one: nothing.
    pub(crate) fn begin_log(
        &self,
        pipeline: &Pipeline,
        request: &mut RunRequest,
        tags: RunTags,
        stream: bool,
    ) -> Option<PendingLog> {
        self.store()?;
        if pipeline.params.merged(&request.params).seed.is_none() {
            request.params.seed = Some(random_seed());
        }
        let full = self.log_bodies() == LogBodies::Full;
        let log = PendingLog {
            tags,
            stream,
            created_ms: now_ms(),
            vars: if full { request.vars.clone() } else { BTreeMap::new() },
            history: if full { request.history.clone() } else { Vec::new() },
            params: pipeline.params.merged(&request.params),
            client_raw: request.include_raw,
            client_trace: request.trace,
        };
        request.include_raw |= full;
        request.trace |= full;
        Some(log)
    }
}

impl PendingLog {
    /// Queues the record and strips it down to what the client asked for.
    pub(crate) fn finish(self, state: &AppState, request_id: &str, record: &mut RunRecord) {
        let full = state.log_bodies() == LogBodies::Full;
        let source = request_id.split('-').next().unwrap_or("");
        let stages: Vec<serde_json::Value> = record
            .stages
            .iter()
            .map(|s| {
                let mut v = json!({"stage": s.stage, "plugin": s.plugin, "sha256": s.sha256, "ms": s.ms});
                if let Some(e) = &s.skipped_error {
                    v["skipped_error"] = e.clone().into();
                }
                if full && let Some(o) = &s.output {
                    v["output"] = o.clone().into();
                }
                v
            })
            .collect();
        let mut detail = json!({
            "source": match source { "chatcmpl" => "chat", "run" => "native", other => other },
            "stream": self.stream,
            "backend": record.backend,
            "params": self.params,
            "stages": stages,
            "timings": record.timings,
        });
        if full {
            detail["vars"] = json!(self.vars);
            detail["history"] = json!(self.history);
            detail["messages"] = json!(record.messages);
        }
        let row = ResponseRow {
            id: request_id.to_owned(),
            created_ms: self.created_ms,
            pipeline: record.pipeline.clone(),
            pipeline_sha256: record.pipeline_sha256.clone(),
            experiment: self.tags.experiment,
            variant: self.tags.variant,
            user: self.tags.user,
            finish_reason: record.finish_reason.clone(),
            latency_ms: record.timings.total_ms,
            ttft_ms: record.timings.ttft_ms,
            prompt_tokens: record.usage.prompt_tokens as i64,
            completion_tokens: record.usage.completion_tokens as i64,
            raw_text: if full { record.raw_text.clone() } else { None },
            text: full.then(|| record.text.clone()),
            detail,
        };
        if let Some(store) = state.store() {
            store.log(row);
        }
        if !self.client_raw {
            record.raw_text = None;
        }
        if !self.client_trace {
            record.messages = None;
            for s in &mut record.stages {
                s.output = None;
            }
        }
    }
}
