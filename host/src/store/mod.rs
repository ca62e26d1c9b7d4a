//! The store: the request log (every completion), user feedback on answers, and what the
//! experiment results and replay read back. The only module that touches a database.
//!
//! - SQLite (an embedded file, the default) or PostgreSQL (several replicas sharing one
//!   store), chosen by URL ([`DbUrl`]); schema migrations run at [`Store::open`].
//! - Logging never slows or fails a request: [`Store::log`] puts the record on a bounded queue
//!   and returns; a writer thread commits what is queued in batches. A full queue or a failing
//!   database drops records, counted in [`StoreStats`] (and so in `/metrics`).
//! - Feedback and reads are synchronous (callers run them on blocking threads): a feedback
//!   write must say whether its response exists. A response still on the queue is waited for
//!   ([`Store::wait_logged`]), so feedback sent right after an answer finds it.

mod postgres;
mod sqlite;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Records waiting for the writer; more are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;
/// Most records committed in one transaction.
const BATCH: usize = 512;
/// How often old records are deleted when a retention is set.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite:PATH` (or a bare path ending in `.db`).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`, passed to the client as is.
    Postgres(String),
    /// `none`: no request log, no feedback.
    None,
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, StoreError> {
        let url = url.trim();
        if url == "none" {
            Ok(DbUrl::None)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DbUrl::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(StoreError::Url(format!("`{url}`: no file after `sqlite:`")));
            }
            Ok(DbUrl::Sqlite(PathBuf::from(path)))
        } else {
            Err(StoreError::Url(format!("`{url}`: use sqlite:PATH, postgres://USER@HOST:PORT/DB or none")))
        }
    }

    /// For messages: the URL without a password.
    pub fn display(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            DbUrl::None => "none".into(),
            DbUrl::Postgres(u) => match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => {
                    let creds = &u[s + 3..at];
                    let user = creds.split(':').next().unwrap_or("");
                    format!("{}{user}{}", &u[..s + 3], &u[at..])
                }
                _ => u.clone(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {0}")]
    Url(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("{0}")]
    Other(String),
}

/// One logged completion. The queryable fields are columns; the rest is `detail` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseRow {
    pub id: String,
    /// Unix time in milliseconds.
    pub created_ms: i64,
    pub pipeline: String,
    pub pipeline_sha256: String,
    pub experiment: Option<String>,
    pub variant: Option<String>,
    pub user: Option<String>,
    pub finish_reason: String,
    pub latency_ms: f64,
    pub ttft_ms: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The model's text (absent with `--log-bodies none`).
    pub raw_text: Option<String>,
    /// The final text.
    pub text: Option<String>,
    /// Variables, history, the prompt's messages, parameters used, stages, backend, ...
    pub detail: serde_json::Value,
}

/// A named score on one response (`thumbs` 0/1, a `rating`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feedback {
    pub response_id: String,
    pub name: String,
    pub value: f64,
    pub comment: Option<String>,
    pub created_ms: i64,
}

/// A preference between two responses; `preferred: None` is a tie.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pairwise {
    pub response_ids: [String; 2],
    pub preferred: Option<String>,
    pub comment: Option<String>,
    pub created_ms: i64,
}

/// What the store read back about one experiment (the statistics are computed elsewhere).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentData {
    /// Per variant: requests, distinct users, first logged (ms).
    pub variants: Vec<VariantCounts>,
    /// Per variant and feedback name: count, sum, sum of squares.
    pub feedback: Vec<FeedbackSums>,
    /// Per logged response: variant, latency, completion tokens.
    pub samples: Vec<(String, f64, f64)>,
    /// Pairwise comparisons where both responses can be placed in this experiment:
    /// (variant of the first, variant of the second, which won: Some(0 | 1), None for a tie).
    pub pairs: Vec<(String, String, Option<u8>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantCounts {
    pub variant: String,
    pub requests: u64,
    pub users: u64,
    pub first_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackSums {
    pub variant: String,
    pub name: String,
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

/// A logged answer to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRow {
    pub id: String,
    pub created_ms: i64,
    pub raw_text: String,
    pub text: String,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub written: u64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because the database failed the write.
    pub dropped_store_error: u64,
    pub queued: u64,
}

/// The operations both databases implement.
trait Db: Send {
    fn insert_responses(&mut self, rows: &[ResponseRow]) -> Result<(), StoreError>;
    fn response(&mut self, id: &str) -> Result<Option<ResponseRow>, StoreError>;
    fn feedback_of(&mut self, id: &str) -> Result<(Vec<Feedback>, Vec<Pairwise>), StoreError>;
    fn exists(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Inserts or replaces; true when it replaced.
    fn put_feedback(&mut self, f: &Feedback) -> Result<bool, StoreError>;
    fn put_pairwise(&mut self, p: &Pairwise) -> Result<bool, StoreError>;
    /// `pipelines`: (variant, pipeline) to place untagged responses of pairwise comparisons.
    fn experiment_data(
        &mut self,
        name: &str,
        pipelines: &[(String, String)],
    ) -> Result<ExperimentData, StoreError>;
    fn replay_rows(
        &mut self,
        pipeline: &str,
        since_ms: i64,
        limit: u64,
    ) -> Result<Vec<ReplayRow>, StoreError>;
    /// Deletes responses (and their feedback) logged before `before_ms`; returns how many.
    fn delete_before(&mut self, before_ms: i64) -> Result<u64, StoreError>;
}

/// One side of a pairwise comparison, as logged.
struct Side {
    experiment: Option<String>,
    variant: Option<String>,
    pipeline: String,
}

/// The variant of experiment `name` a response counts for: its own tag, or, for a response
/// logged outside any experiment (e.g. the playground's blind comparison of two pipelines), the
/// variant whose pipeline answered it.
fn place(name: &str, pipelines: &[(String, String)], s: &Side) -> Option<String> {
    match &s.experiment {
        Some(e) if e == name => s.variant.clone(),
        Some(_) => None,
        None => pipelines.iter().find(|(_, p)| *p == s.pipeline).map(|(v, _)| v.clone()),
    }
}

fn place_pair(
    name: &str,
    pipelines: &[(String, String)],
    a: Side,
    b: Side,
    a_won: Option<bool>,
    b_won: Option<bool>,
) -> Option<(String, String, Option<u8>)> {
    let (va, vb) = (place(name, pipelines, &a)?, place(name, pipelines, &b)?);
    if va == vb {
        return None;
    }
    let winner = match (a_won, b_won) {
        (Some(true), _) => Some(0),
        (_, Some(true)) => Some(1),
        _ => None,
    };
    Some((va, vb, winner))
}

fn open_db(url: &DbUrl, writer: bool) -> Result<Box<dyn Db>, StoreError> {
    match url {
        DbUrl::Sqlite(path) => Ok(Box::new(sqlite::Sqlite::open(path, writer)?)),
        DbUrl::Postgres(u) => Ok(Box::new(postgres::Postgres::open(u)?)),
        DbUrl::None => Err(StoreError::Other("the store is off (--db none)".into())),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Shared {
    /// Ids queued and not yet committed (or dropped).
    pending: Mutex<HashSet<String>>,
    settled: Condvar,
    written: AtomicU64,
    dropped_full: AtomicU64,
    dropped_error: AtomicU64,
}

impl Shared {
    fn settle<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut pending = self.pending.lock().unwrap();
        for id in ids {
            pending.remove(id);
        }
        self.settled.notify_all();
    }
}

/// Store settings.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Delete records older than this many days (none: keep everything).
    pub retention_days: Option<u32>,
}

/// The store. Cheap to clone; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    url: DbUrl,
    conn: Arc<Mutex<Box<dyn Db>>>,
    tx: SyncSender<ResponseRow>,
    shared: Arc<Shared>,
}

impl Store {
    /// Opens (creating if needed) and migrates the store, and starts its writer thread.
    pub fn open(url: &DbUrl, options: StoreOptions) -> Result<Store, StoreError> {
        // The writer's connection first: it runs the migrations.
        let mut writer = open_db(url, true)?;
        let conn = open_db(url, false)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let shared = Arc::new(Shared::default());
        let retention = options.retention_days.map(|d| i64::from(d) * 86_400_000);
        if let Some(keep) = retention {
            let deleted = writer.delete_before(now_ms() - keep)?;
            if deleted > 0 {
                tracing::info!(deleted, "request log: deleted records past the retention");
            }
        }
        let (s, display) = (shared.clone(), url.display());
        std::thread::Builder::new()
            .name("pipehost-store".into())
            .spawn(move || writer_loop(writer, rx, s, retention, display))
            .map_err(|e| StoreError::Other(format!("starting the store's writer thread: {e}")))?;
        Ok(Store { url: url.clone(), conn: Arc::new(Mutex::new(conn)), tx, shared })
    }

    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Queues `row` for the writer; never blocks. False when it was dropped (queue full).
    pub fn log(&self, row: ResponseRow) -> bool {
        let id = row.id.clone();
        self.shared.pending.lock().unwrap().insert(id.clone());
        match self.tx.try_send(row) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped_full.fetch_add(1, Ordering::Relaxed);
                self.shared.settle(std::iter::once(id.as_str()));
                false
            }
        }
    }

    /// Waits (at most `timeout`) until `id` is no longer on the queue: committed or dropped.
    pub fn wait_logged(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending = self.shared.pending.lock().unwrap();
        while pending.contains(id) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self.shared.settled.wait_timeout(pending, left).unwrap().0;
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is settled.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending = self.shared.pending.lock().unwrap();
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self.shared.settled.wait_timeout(pending, left).unwrap().0;
        }
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped_queue_full: self.shared.dropped_full.load(Ordering::Relaxed),
            dropped_store_error: self.shared.dropped_error.load(Ordering::Relaxed),
            queued: self.shared.pending.lock().unwrap().len() as u64,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(conn.as_mut())
    }

    /// The logged response `id` with its feedback (None if unknown). Blocking.
    #[allow(clippy::type_complexity)]
    pub fn response(
        &self,
        id: &str,
    ) -> Result<Option<(ResponseRow, Vec<Feedback>, Vec<Pairwise>)>, StoreError> {
        self.wait_logged(id, Duration::from_secs(5));
        self.with(|db| {
            let Some(row) = db.response(id)? else { return Ok(None) };
            let (feedback, pairwise) = db.feedback_of(id)?;
            Ok(Some((row, feedback, pairwise)))
        })
    }

    /// Whether response `id` is logged (waiting for it if it is still queued). Blocking.
    pub fn exists(&self, id: &str) -> Result<bool, StoreError> {
        self.wait_logged(id, Duration::from_secs(5));
        self.with(|db| db.exists(id))
    }

    /// Records feedback; true when it replaced an earlier value of the same name. The caller
    /// checks that the response exists. Blocking.
    pub fn put_feedback(&self, f: &Feedback) -> Result<bool, StoreError> {
        self.with(|db| db.put_feedback(f))
    }

    /// Records a pairwise preference (the pair in either order replaces an earlier one).
    pub fn put_pairwise(&self, p: &Pairwise) -> Result<bool, StoreError> {
        let mut p = p.clone();
        p.response_ids.sort();
        self.with(|db| db.put_pairwise(&p))
    }

    /// What the experiment `name` logged. `pipelines`: its (variant, pipeline) pairs. Blocking.
    pub fn experiment_data(
        &self,
        name: &str,
        pipelines: &[(String, String)],
    ) -> Result<ExperimentData, StoreError> {
        self.with(|db| db.experiment_data(name, pipelines))
    }

    /// Logged answers of `pipeline` since `since_ms` that have their texts, newest first.
    pub fn replay_rows(
        &self,
        pipeline: &str,
        since_ms: i64,
        limit: u64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        self.with(|db| db.replay_rows(pipeline, since_ms, limit))
    }
}

fn writer_loop(
    mut db: Box<dyn Db>,
    rx: Receiver<ResponseRow>,
    shared: Arc<Shared>,
    retention_ms: Option<i64>,
    url: String,
) {
    let mut last_retention = Instant::now();
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(RETENTION_EVERY) {
            Ok(row) => row,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(keep) = retention_ms
                    && let Err(e) = db.delete_before(now_ms() - keep)
                {
                    tracing::warn!("request log ({url}): deleting old records: {e}");
                }
                last_retention = Instant::now();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        match db.insert_responses(&batch) {
            Ok(()) => {
                shared.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared.dropped_error.fetch_add(batch.len() as u64, Ordering::Relaxed);
                // One line per 10 s at most: a store that is down must not flood the log.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!("request log ({url}): dropped {} records: {e}", batch.len());
                    last_warning = Some(Instant::now());
                }
            }
        }
        shared.settle(batch.iter().map(|r| r.id.as_str()));
        if let Some(keep) = retention_ms
            && last_retention.elapsed() > RETENTION_EVERY
        {
            let _ = db.delete_before(now_ms() - keep);
            last_retention = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(DbUrl::parse("sqlite:a/b.db").unwrap(), DbUrl::Sqlite("a/b.db".into()));
        assert_eq!(DbUrl::parse("sqlite:///tmp/x.db").unwrap(), DbUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(DbUrl::parse("none").unwrap(), DbUrl::None);
        assert!(matches!(DbUrl::parse("postgresql://u@h/db").unwrap(), DbUrl::Postgres(_)));
        assert!(DbUrl::parse("mysql://x").is_err());
        assert!(DbUrl::parse("sqlite:").is_err());
        let pg = DbUrl::parse("postgres://me:sekret@127.0.0.1:5432/db").unwrap();
        assert_eq!(pg.display(), "postgres://me@127.0.0.1:5432/db");
    }
}
