//! Prometheus metrics (`GET /metrics`). The server owns the registry; pipeline reload counts are
//! read from [`crate::pipeline::Registry::stats`] at scrape time. Label values are bounded: the
//! route template (not the raw path), status codes, error codes, pipeline names that exist,
//! stage and plugin names from the pipeline files.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pipeline::{RunRecord, StageReport};

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    cancelled: Family<Labels, Counter>,
    runs: Family<Labels, Counter>,
    completion_tokens: Family<Labels, Counter>,
    prompt_tokens: Family<Labels, Counter>,
    ttft: Histograms,
    run_duration: Histograms,
    stage_duration: Histograms,
    stage_skipped: Family<Labels, Counter>,
    plugin_errors: Family<Labels, Counter>,
    queue_depth: Gauge,
    queue_capacity: Gauge,
    ready: Gauge,
    reloads: Counter,
    reload_failures: Counter,
    log_written: Counter,
    log_dropped: Family<Labels, Counter>,
    log_queued: Gauge,
    engine_steps: Counter,
    engine_step_sequences: Counter,
    engine_batch: Gauge,
    engine_running: Gauge,
    engine_admitted: Counter,
    engine_queue_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    prefix_lookup_tokens: Counter,
    prefix_hit_tokens: Counter,
    kv_bytes: Family<Labels, Gauge>,
    kv_budget: Gauge,
    /// Serialises scrapes (the reload counters are brought up to date during one).
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            http_requests: Family::default(),
            errors: Family::default(),
            cancelled: Family::default(),
            runs: Family::default(),
            completion_tokens: Family::default(),
            prompt_tokens: Family::default(),
            ttft: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            run_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            stage_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            stage_skipped: Family::default(),
            plugin_errors: Family::default(),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            ready: Gauge::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            log_written: Counter::default(),
            log_dropped: Family::default(),
            log_queued: Gauge::default(),
            engine_steps: Counter::default(),
            engine_step_sequences: Counter::default(),
            engine_batch: Gauge::default(),
            engine_running: Gauge::default(),
            engine_admitted: Counter::default(),
            engine_queue_wait: Counter::default(),
            prefix_lookup_tokens: Counter::default(),
            prefix_hit_tokens: Counter::default(),
            kv_bytes: Family::default(),
            kv_budget: Gauge::default(),
            registry: Registry::default(),
            scrape: Mutex::new(()),
        };
        // Counters get `_total` appended by the encoder.
        registry.register(
            "pipehost_http_requests",
            "HTTP requests answered, by route template and status code",
            m.http_requests.clone(),
        );
        registry.register(
            "pipehost_request_errors",
            "Error responses (and errors ending a stream), by error code",
            m.errors.clone(),
        );
        registry.register(
            "pipehost_requests_cancelled",
            "Generations stopped early: client disconnected, client not reading (stalled), or server shutdown",
            m.cancelled.clone(),
        );
        registry.register(
            "pipehost_pipeline_runs",
            "Completed pipeline runs, by pipeline and finish reason",
            m.runs.clone(),
        );
        registry.register(
            "pipehost_tokens_generated",
            "Completion tokens generated, by pipeline",
            m.completion_tokens.clone(),
        );
        registry.register(
            "pipehost_prompt_tokens",
            "Prompt tokens processed, by pipeline",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "pipehost_time_to_first_token_seconds",
            "From the start of a run to the first generated text, by pipeline",
            m.ttft.clone(),
        );
        registry.register(
            "pipehost_run_duration_seconds",
            "Whole pipeline run (prompt builder, generation, post-processors), by pipeline",
            m.run_duration.clone(),
        );
        registry.register(
            "pipehost_stage_duration_seconds",
            "Time spent in each pipeline stage's plugin, by pipeline, stage and plugin",
            m.stage_duration.clone(),
        );
        registry.register(
            "pipehost_stage_skipped",
            "Stages that failed and were skipped (on_error: skip), by pipeline and stage",
            m.stage_skipped.clone(),
        );
        registry.register(
            "pipehost_plugin_errors",
            "Plugin failures that failed a request, by plugin and cause (trap, timeout, panic, memory_limit, ...)",
            m.plugin_errors.clone(),
        );
        registry.register(
            "pipehost_queue_depth",
            "Generation requests admitted and not yet finished",
            m.queue_depth.clone(),
        );
        registry.register(
            "pipehost_queue_capacity",
            "Most generation requests admitted at once (--max-queue); more get 429",
            m.queue_capacity.clone(),
        );
        registry.register("pipehost_ready", "1 when the model backend is ready", m.ready.clone());
        registry.register(
            "pipehost_pipeline_reloads",
            "Pipeline or plugin reloads that succeeded",
            m.reloads.clone(),
        );
        registry.register(
            "pipehost_pipeline_reload_failures",
            "Pipeline or plugin reloads that failed (the previous version kept serving)",
            m.reload_failures.clone(),
        );
        registry.register(
            "pipehost_log_records_written",
            "Completions written to the request log",
            m.log_written.clone(),
        );
        registry.register(
            "pipehost_log_records_dropped",
            "Completions not logged, by reason: queue_full (the writer fell behind) or store_error (the database failed)",
            m.log_dropped.clone(),
        );
        registry.register(
            "pipehost_log_queue_depth",
            "Completions waiting for the request log's writer",
            m.log_queued.clone(),
        );
        registry.register(
            "pipehost_engine_steps",
            "Forward steps the model engine ran",
            m.engine_steps.clone(),
        );
        registry.register(
            "pipehost_engine_step_sequences",
            "Sequences summed over forward steps (divided by steps: the mean batch size)",
            m.engine_step_sequences.clone(),
        );
        registry.register(
            "pipehost_engine_batch_size",
            "Sequences in the latest forward step",
            m.engine_batch.clone(),
        );
        registry.register(
            "pipehost_engine_running",
            "Requests in the engine's batch now",
            m.engine_running.clone(),
        );
        registry.register(
            "pipehost_engine_admitted",
            "Requests taken into the engine's batch",
            m.engine_admitted.clone(),
        );
        registry.register(
            "pipehost_engine_queue_wait_seconds",
            "Time requests waited before joining the batch, summed (divided by admitted: the mean)",
            m.engine_queue_wait.clone(),
        );
        registry.register(
            "pipehost_prefix_cache_lookup_tokens",
            "Prompt tokens looked up in the prefix cache",
            m.prefix_lookup_tokens.clone(),
        );
        registry.register(
            "pipehost_prefix_cache_hit_tokens",
            "Prompt tokens found in the prefix cache (divided by lookup tokens: the hit rate)",
            m.prefix_hit_tokens.clone(),
        );
        registry.register(
            "pipehost_kv_cache_bytes",
            "KV-cache memory in use, by holder: sequences (reserved by running requests) or prefix",
            m.kv_bytes.clone(),
        );
        registry.register(
            "pipehost_kv_cache_budget_bytes",
            "KV-cache budget (--kv-cache-mb)",
            m.kv_budget.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the model engine's figures up to date (at scrape time).
    pub fn engine(&self, s: &crate::model::EngineStats) {
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let catch_up = |c: &Counter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        catch_up(&self.engine_steps, s.steps);
        catch_up(&self.engine_step_sequences, s.step_sequences);
        catch_up(&self.engine_admitted, s.admitted);
        catch_up(&self.prefix_lookup_tokens, s.prefix_lookup_tokens);
        catch_up(&self.prefix_hit_tokens, s.prefix_hit_tokens);
        let waited = s.queue_wait_s - self.engine_queue_wait.get();
        if waited > 0.0 {
            self.engine_queue_wait.inc_by(waited);
        }
        self.engine_batch.set(s.last_batch as i64);
        self.engine_running.set(s.running as i64);
        self.kv_bytes.get_or_create(&vec![("use", "sequences".to_owned())]).set(s.kv_sequences_bytes as i64);
        self.kv_bytes.get_or_create(&vec![("use", "prefix".to_owned())]).set(s.kv_prefix_bytes as i64);
        self.kv_budget.set(s.kv_budget_bytes as i64);
    }

    /// Brings the request log's counters up to date (at scrape time).
    pub fn store(&self, stats: &crate::store::StoreStats) {
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.log_written.inc_by(stats.written.saturating_sub(self.log_written.get()));
        for (reason, n) in
            [("queue_full", stats.dropped_queue_full), ("store_error", stats.dropped_store_error)]
        {
            let c = self.log_dropped.get_or_create(&vec![("reason", reason.to_string())]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        self.log_queued.set(stats.queued as i64);
    }

    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&vec![("route", route.to_string()), ("status", status.to_string())])
            .inc();
    }

    pub fn error(&self, code: &str) {
        self.errors.get_or_create(&vec![("code", code.to_string())]).inc();
    }

    pub fn cancelled(&self, reason: &'static str) {
        self.cancelled.get_or_create(&vec![("reason", reason.to_string())]).inc();
    }

    pub fn plugin_error(&self, plugin: &str, cause: &str) {
        self.plugin_errors
            .get_or_create(&vec![("plugin", plugin.to_string()), ("cause", cause.to_string())])
            .inc();
    }

    /// Records a finished run.
    pub fn run(&self, record: &RunRecord) {
        let pipeline = vec![("pipeline", record.pipeline.clone())];
        self.runs
            .get_or_create(&vec![
                ("pipeline", record.pipeline.clone()),
                ("finish_reason", record.finish_reason.clone()),
            ])
            .inc();
        self.completion_tokens.get_or_create(&pipeline).inc_by(record.usage.completion_tokens as u64);
        self.prompt_tokens.get_or_create(&pipeline).inc_by(record.usage.prompt_tokens as u64);
        if record.usage.completion_tokens > 0 || !record.text.is_empty() {
            self.ttft.get_or_create(&pipeline).observe(record.timings.ttft_ms / 1000.0);
        }
        self.run_duration.get_or_create(&pipeline).observe(record.timings.total_ms / 1000.0);
        for stage in &record.stages {
            self.stage(&record.pipeline, stage);
        }
    }

    fn stage(&self, pipeline: &str, stage: &StageReport) {
        let labels = vec![
            ("pipeline", pipeline.to_string()),
            ("stage", stage.stage.clone()),
            ("plugin", stage.plugin.clone()),
        ];
        self.stage_duration.get_or_create(&labels).observe(stage.ms / 1000.0);
        if stage.skipped_error.is_some() {
            self.stage_skipped
                .get_or_create(&vec![("pipeline", pipeline.to_string()), ("stage", stage.stage.clone())])
                .inc();
        }
    }

    /// The Prometheus text exposition, with the gauges and reload counters brought up to date.
    pub fn render(
        &self,
        queue_depth: usize,
        queue_capacity: usize,
        ready: bool,
        reloads: u64,
        failures: u64,
    ) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.queue_depth.set(queue_depth as i64);
        self.queue_capacity.set(queue_capacity as i64);
        self.ready.set(i64::from(ready));
        // Counters only go up: add what the registry counted since the last scrape.
        self.reloads.inc_by(reloads.saturating_sub(self.reloads.get()));
        self.reload_failures.inc_by(failures.saturating_sub(self.reload_failures.get()));
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
