//! The PostgreSQL store, for several replicas sharing one log. The sync client runs only on
//! the store's own threads (the writer, and the blocking threads the server hands reads to),
//! never on an async worker. A lost connection is reopened on the next call.

use postgres::{Client, NoTls, Row};

use super::{
    Db, ExperimentData, Feedback, FeedbackSums, Pairwise, ReplayRow, ResponseRow, StoreError, VariantCounts,
};

/// Schema migrations, in order (the same tables as SQLite's, in PostgreSQL's types).
const MIGRATIONS: &[&str] = &["
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL,
    pipeline TEXT NOT NULL,
    pipeline_sha256 TEXT NOT NULL,
    experiment TEXT,
    variant TEXT,
    user_id TEXT,
    finish_reason TEXT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    raw_text TEXT,
    text TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX responses_experiment ON responses (experiment, variant);
CREATE INDEX responses_pipeline ON responses (pipeline, created_ms);
CREATE INDEX responses_created ON responses (created_ms);
CREATE TABLE feedback (
    response_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    comment TEXT,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (response_id, name)
);
CREATE TABLE pairwise (
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    preferred TEXT,
    comment TEXT,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (response_a, response_b)
);
CREATE INDEX pairwise_b ON pairwise (response_b);
"];

/// Any fixed number: serialises migrations of processes starting at once.
const MIGRATION_LOCK: i64 = 0x7069_7065_686f_7374;

pub struct Postgres {
    url: String,
    client: Option<Client>,
}

impl Postgres {
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut db = Postgres { url: url.to_owned(), client: None };
        db.migrate()?;
        Ok(db)
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(Client::connect(&self.url, NoTls)?);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Runs `f`; on failure, forgets the connection so the next call reconnects.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let result = f(self.client()?);
        if result.is_err() {
            self.client = None;
        }
        Ok(result?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let applied = self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS pipehost_schema (version BIGINT NOT NULL)")?;
            let version: Option<i64> = tx.query_one("SELECT MAX(version) FROM pipehost_schema", &[])?.get(0);
            let version = version.unwrap_or(0) as usize;
            if version <= MIGRATIONS.len() {
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                    tx.batch_execute(sql)?;
                    tx.execute("INSERT INTO pipehost_schema (version) VALUES ($1)", &[&(i as i64 + 1)])?;
                }
            }
            tx.commit()?;
            Ok(version)
        })?;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "the store's schema is version {applied}, newer than this pipehost knows ({}): upgrade pipehost",
                MIGRATIONS.len()
            )));
        }
        Ok(())
    }
}

fn row_of(r: &Row) -> ResponseRow {
    let detail: String = r.get(14);
    ResponseRow {
        id: r.get(0),
        created_ms: r.get(1),
        pipeline: r.get(2),
        pipeline_sha256: r.get(3),
        experiment: r.get(4),
        variant: r.get(5),
        user: r.get(6),
        finish_reason: r.get(7),
        latency_ms: r.get(8),
        ttft_ms: r.get(9),
        prompt_tokens: r.get(10),
        completion_tokens: r.get(11),
        raw_text: r.get(12),
        text: r.get(13),
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    }
}

impl Db for Postgres {
    fn insert_responses(&mut self, rows: &[ResponseRow]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let insert = tx.prepare(
                "INSERT INTO responses (id, created_ms, pipeline, pipeline_sha256, experiment, variant, user_id, finish_reason, latency_ms, ttft_ms, prompt_tokens, completion_tokens, raw_text, text, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO NOTHING",
            )?;
            for r in rows {
                let detail = r.detail.to_string();
                tx.execute(
                    &insert,
                    &[
                        &r.id,
                        &r.created_ms,
                        &r.pipeline,
                        &r.pipeline_sha256,
                        &r.experiment,
                        &r.variant,
                        &r.user,
                        &r.finish_reason,
                        &r.latency_ms,
                        &r.ttft_ms,
                        &r.prompt_tokens,
                        &r.completion_tokens,
                        &r.raw_text,
                        &r.text,
                        &detail,
                    ],
                )?;
            }
            tx.commit()
        })
    }

    fn response(&mut self, id: &str) -> Result<Option<ResponseRow>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT id, created_ms, pipeline, pipeline_sha256, experiment, variant, user_id, finish_reason, latency_ms, ttft_ms, prompt_tokens, completion_tokens, raw_text, text, detail FROM responses WHERE id = $1",
                &[&id],
            )?
            .as_ref()
            .map(row_of))
        })
    }

    fn feedback_of(&mut self, id: &str) -> Result<(Vec<Feedback>, Vec<Pairwise>), StoreError> {
        self.with(|c| {
            let feedback = c
                .query(
                    "SELECT response_id, name, value, comment, created_ms FROM feedback WHERE response_id = $1 ORDER BY name",
                    &[&id],
                )?
                .iter()
                .map(|r| Feedback {
                    response_id: r.get(0),
                    name: r.get(1),
                    value: r.get(2),
                    comment: r.get(3),
                    created_ms: r.get(4),
                })
                .collect();
            let pairwise = c
                .query(
                    "SELECT response_a, response_b, preferred, comment, created_ms FROM pairwise WHERE response_a = $1 OR response_b = $1 ORDER BY created_ms",
                    &[&id],
                )?
                .iter()
                .map(|r| Pairwise {
                    response_ids: [r.get(0), r.get(1)],
                    preferred: r.get(2),
                    comment: r.get(3),
                    created_ms: r.get(4),
                })
                .collect();
            Ok((feedback, pairwise))
        })
    }

    fn exists(&mut self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.query_opt("SELECT 1 FROM responses WHERE id = $1", &[&id])?.is_some()))
    }

    fn put_feedback(&mut self, f: &Feedback) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let replaced = tx
                .query_opt(
                    "SELECT 1 FROM feedback WHERE response_id = $1 AND name = $2",
                    &[&f.response_id, &f.name],
                )?
                .is_some();
            tx.execute(
                "INSERT INTO feedback (response_id, name, value, comment, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (response_id, name) DO UPDATE SET value = excluded.value, comment = excluded.comment, created_ms = excluded.created_ms",
                &[&f.response_id, &f.name, &f.value, &f.comment, &f.created_ms],
            )?;
            tx.commit()?;
            Ok(replaced)
        })
    }

    fn put_pairwise(&mut self, p: &Pairwise) -> Result<bool, StoreError> {
        let [a, b] = &p.response_ids;
        self.with(|c| {
            let mut tx = c.transaction()?;
            let replaced = tx
                .query_opt("SELECT 1 FROM pairwise WHERE response_a = $1 AND response_b = $2", &[a, b])?
                .is_some();
            tx.execute(
                "INSERT INTO pairwise (response_a, response_b, preferred, comment, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (response_a, response_b) DO UPDATE SET preferred = excluded.preferred, comment = excluded.comment, created_ms = excluded.created_ms",
                &[a, b, &p.preferred, &p.comment, &p.created_ms],
            )?;
            tx.commit()?;
            Ok(replaced)
        })
    }

    fn experiment_data(
        &mut self,
        name: &str,
        pipelines: &[(String, String)],
    ) -> Result<ExperimentData, StoreError> {
        let (variants, feedback, samples, pair_rows) = self.with(|c| {
            // REPEATABLE READ: the four queries see one snapshot.
            let mut tx = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
            let variants: Vec<VariantCounts> = tx
                .query(
                    "SELECT variant, COUNT(*), COUNT(DISTINCT user_id), MIN(created_ms) FROM responses WHERE experiment = $1 AND variant IS NOT NULL GROUP BY variant",
                    &[&name],
                )?
                .iter()
                .map(|r| VariantCounts {
                    variant: r.get(0),
                    requests: r.get::<_, i64>(1) as u64,
                    users: r.get::<_, i64>(2) as u64,
                    first_ms: r.get(3),
                })
                .collect();
            let feedback: Vec<FeedbackSums> = tx
                .query(
                    "SELECT r.variant, f.name, COUNT(*), SUM(f.value), SUM(f.value * f.value) FROM feedback f JOIN responses r ON r.id = f.response_id WHERE r.experiment = $1 AND r.variant IS NOT NULL GROUP BY r.variant, f.name",
                    &[&name],
                )?
                .iter()
                .map(|r| FeedbackSums {
                    variant: r.get(0),
                    name: r.get(1),
                    n: r.get::<_, i64>(2) as u64,
                    sum: r.get(3),
                    sum_sq: r.get(4),
                })
                .collect();
            let samples: Vec<(String, f64, f64)> = tx
                .query(
                    "SELECT variant, latency_ms, completion_tokens FROM responses WHERE experiment = $1 AND variant IS NOT NULL",
                    &[&name],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as f64))
                .collect();
            let pairs = tx.query(
                "SELECT ra.experiment, ra.variant, ra.pipeline, rb.experiment, rb.variant, rb.pipeline, p.preferred = p.response_a, p.preferred = p.response_b
                 FROM pairwise p JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
                 WHERE ra.experiment = $1 OR rb.experiment = $1 OR ra.experiment IS NULL OR rb.experiment IS NULL",
                &[&name],
            )?;
            tx.commit()?;
            Ok((variants, feedback, samples, pairs))
        })?;
        let side = |r: &Row, i: usize| super::Side {
            experiment: r.get(i),
            variant: r.get(i + 1),
            pipeline: r.get(i + 2),
        };
        let pairs = pair_rows
            .iter()
            .filter_map(|r| super::place_pair(name, pipelines, side(r, 0), side(r, 3), r.get(6), r.get(7)))
            .collect();
        Ok(ExperimentData { variants, feedback, samples, pairs })
    }

    fn replay_rows(
        &mut self,
        pipeline: &str,
        since_ms: i64,
        limit: u64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        self.with(|c| {
            Ok(c.query(
                "SELECT id, created_ms, raw_text, text FROM responses WHERE pipeline = $1 AND created_ms >= $2 AND raw_text IS NOT NULL AND text IS NOT NULL ORDER BY created_ms DESC, id LIMIT $3",
                &[&pipeline, &since_ms, &(limit as i64)],
            )?
            .iter()
            .map(|r| ReplayRow { id: r.get(0), created_ms: r.get(1), raw_text: r.get(2), text: r.get(3) })
            .collect())
        })
    }

    fn delete_before(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let old = "SELECT id FROM responses WHERE created_ms < $1";
            tx.execute(&format!("DELETE FROM feedback WHERE response_id IN ({old})"), &[&before_ms])?;
            tx.execute(
                &format!("DELETE FROM pairwise WHERE response_a IN ({old}) OR response_b IN ({old})"),
                &[&before_ms],
            )?;
            let n = tx.execute("DELETE FROM responses WHERE created_ms < $1", &[&before_ms])?;
            tx.commit()?;
            Ok(n)
        })
    }
}
