//! The SQLite store: one file, WAL mode (readers never wait for the writer), migrations in
//! one `BEGIN IMMEDIATE` transaction so two processes opening the same file migrate once.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Db, ExperimentData, Feedback, FeedbackSums, Pairwise, ReplayRow, ResponseRow, StoreError, VariantCounts,
};

/// Schema migrations, in order; the store records how many it has applied.
const MIGRATIONS: &[&str] = &["
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    pipeline_sha256 TEXT NOT NULL,
    experiment TEXT,
    variant TEXT,
    user_id TEXT,
    finish_reason TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
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
    value REAL NOT NULL,
    comment TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (response_id, name)
);
CREATE TABLE pairwise (
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    preferred TEXT,
    comment TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (response_a, response_b)
);
CREATE INDEX pairwise_b ON pairwise (response_b);
"];

pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    pub fn open(path: &Path, writer: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        // The writer gives up on a locked database sooner: its records are dropped (and
        // counted) rather than piling up behind a lock; readers and feedback wait longer.
        conn.busy_timeout(if writer { Duration::from_millis(1000) } else { Duration::from_secs(5) })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL: a commit survives a process crash; an OS crash may lose the last
        // moments, which a request log can afford.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut db = Sqlite { conn };
        if writer {
            db.migrate()?;
        }
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS pipehost_schema (version INTEGER NOT NULL)")?;
        let version: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM pipehost_schema", [], |r| r.get(0))?;
        let version = version.unwrap_or(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "the store's schema is version {version}, newer than this pipehost knows ({}): upgrade pipehost",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)?;
            tx.execute("INSERT INTO pipehost_schema (version) VALUES (?1)", [i as i64 + 1])?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResponseRow> {
    let detail: String = r.get(14)?;
    Ok(ResponseRow {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        pipeline: r.get(2)?,
        pipeline_sha256: r.get(3)?,
        experiment: r.get(4)?,
        variant: r.get(5)?,
        user: r.get(6)?,
        finish_reason: r.get(7)?,
        latency_ms: r.get(8)?,
        ttft_ms: r.get(9)?,
        prompt_tokens: r.get(10)?,
        completion_tokens: r.get(11)?,
        raw_text: r.get(12)?,
        text: r.get(13)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

impl Db for Sqlite {
    fn insert_responses(&mut self, rows: &[ResponseRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO responses (id, created_ms, pipeline, pipeline_sha256, experiment, variant, user_id, finish_reason, latency_ms, ttft_ms, prompt_tokens, completion_tokens, raw_text, text, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for r in rows {
                insert.execute(params![
                    r.id,
                    r.created_ms,
                    r.pipeline,
                    r.pipeline_sha256,
                    r.experiment,
                    r.variant,
                    r.user,
                    r.finish_reason,
                    r.latency_ms,
                    r.ttft_ms,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.raw_text,
                    r.text,
                    r.detail.to_string(),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn response(&mut self, id: &str) -> Result<Option<ResponseRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, created_ms, pipeline, pipeline_sha256, experiment, variant, user_id, finish_reason, latency_ms, ttft_ms, prompt_tokens, completion_tokens, raw_text, text, detail FROM responses WHERE id = ?1",
            )?
            .query_row([id], row_of)
            .optional()?)
    }

    fn feedback_of(&mut self, id: &str) -> Result<(Vec<Feedback>, Vec<Pairwise>), StoreError> {
        let feedback = self
            .conn
            .prepare_cached(
                "SELECT response_id, name, value, comment, created_ms FROM feedback WHERE response_id = ?1 ORDER BY name",
            )?
            .query_map([id], |r| {
                Ok(Feedback {
                    response_id: r.get(0)?,
                    name: r.get(1)?,
                    value: r.get(2)?,
                    comment: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let pairwise = self
            .conn
            .prepare_cached(
                "SELECT response_a, response_b, preferred, comment, created_ms FROM pairwise WHERE response_a = ?1 OR response_b = ?1 ORDER BY created_ms",
            )?
            .query_map([id], |r| {
                Ok(Pairwise {
                    response_ids: [r.get(0)?, r.get(1)?],
                    preferred: r.get(2)?,
                    comment: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((feedback, pairwise))
    }

    fn exists(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM responses WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn put_feedback(&mut self, f: &Feedback) -> Result<bool, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let replaced = tx
            .query_row(
                "SELECT 1 FROM feedback WHERE response_id = ?1 AND name = ?2",
                params![f.response_id, f.name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        tx.execute(
            "INSERT INTO feedback (response_id, name, value, comment, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (response_id, name) DO UPDATE SET value = excluded.value, comment = excluded.comment, created_ms = excluded.created_ms",
            params![f.response_id, f.name, f.value, f.comment, f.created_ms],
        )?;
        tx.commit()?;
        Ok(replaced)
    }

    fn put_pairwise(&mut self, p: &Pairwise) -> Result<bool, StoreError> {
        let [a, b] = &p.response_ids;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let replaced = tx
            .query_row(
                "SELECT 1 FROM pairwise WHERE response_a = ?1 AND response_b = ?2",
                params![a, b],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        tx.execute(
            "INSERT INTO pairwise (response_a, response_b, preferred, comment, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (response_a, response_b) DO UPDATE SET preferred = excluded.preferred, comment = excluded.comment, created_ms = excluded.created_ms",
            params![a, b, p.preferred, p.comment, p.created_ms],
        )?;
        tx.commit()?;
        Ok(replaced)
    }

    fn experiment_data(
        &mut self,
        name: &str,
        pipelines: &[(String, String)],
    ) -> Result<ExperimentData, StoreError> {
        let mut data = ExperimentData::default();
        // One read transaction: the four queries see the same snapshot.
        let tx = self.conn.transaction()?;
        data.variants = tx
            .prepare(
                "SELECT variant, COUNT(*), COUNT(DISTINCT user_id), MIN(created_ms) FROM responses WHERE experiment = ?1 AND variant IS NOT NULL GROUP BY variant",
            )?
            .query_map([name], |r| {
                Ok(VariantCounts {
                    variant: r.get(0)?,
                    requests: r.get::<_, i64>(1)? as u64,
                    users: r.get::<_, i64>(2)? as u64,
                    first_ms: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        data.feedback = tx
            .prepare(
                "SELECT r.variant, f.name, COUNT(*), SUM(f.value), SUM(f.value * f.value) FROM feedback f JOIN responses r ON r.id = f.response_id WHERE r.experiment = ?1 AND r.variant IS NOT NULL GROUP BY r.variant, f.name",
            )?
            .query_map([name], |r| {
                Ok(FeedbackSums {
                    variant: r.get(0)?,
                    name: r.get(1)?,
                    n: r.get::<_, i64>(2)? as u64,
                    sum: r.get(3)?,
                    sum_sq: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        data.samples = tx
            .prepare(
                "SELECT variant, latency_ms, completion_tokens FROM responses WHERE experiment = ?1 AND variant IS NOT NULL",
            )?
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as f64)))?
            .collect::<Result<_, _>>()?;
        let mut stmt = tx.prepare(
            "SELECT ra.experiment, ra.variant, ra.pipeline, rb.experiment, rb.variant, rb.pipeline, p.preferred = p.response_a, p.preferred = p.response_b
             FROM pairwise p JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
             WHERE ra.experiment = ?1 OR rb.experiment = ?1 OR ra.experiment IS NULL OR rb.experiment IS NULL",
        )?;
        let rows = stmt.query_map([name], |r| {
            let side = |e: Option<String>, v: Option<String>, p: String| super::Side {
                experiment: e,
                variant: v,
                pipeline: p,
            };
            Ok((
                side(r.get(0)?, r.get(1)?, r.get(2)?),
                side(r.get(3)?, r.get(4)?, r.get(5)?),
                r.get::<_, Option<bool>>(6)?,
                r.get::<_, Option<bool>>(7)?,
            ))
        })?;
        for row in rows {
            let (a, b, a_won, b_won) = row?;
            if let Some(pair) = super::place_pair(name, pipelines, a, b, a_won, b_won) {
                data.pairs.push(pair);
            }
        }
        drop(stmt);
        tx.commit()?;
        Ok(data)
    }

    fn replay_rows(
        &mut self,
        pipeline: &str,
        since_ms: i64,
        limit: u64,
    ) -> Result<Vec<ReplayRow>, StoreError> {
        let rows = self
            .conn
            .prepare(
                "SELECT id, created_ms, raw_text, text FROM responses WHERE pipeline = ?1 AND created_ms >= ?2 AND raw_text IS NOT NULL AND text IS NOT NULL ORDER BY created_ms DESC, id LIMIT ?3",
            )?
            .query_map(params![pipeline, since_ms, limit as i64], |r| {
                Ok(ReplayRow { id: r.get(0)?, created_ms: r.get(1)?, raw_text: r.get(2)?, text: r.get(3)? })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn delete_before(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old = "SELECT id FROM responses WHERE created_ms < ?1";
        tx.execute(&format!("DELETE FROM feedback WHERE response_id IN ({old})"), [before_ms])?;
        tx.execute(
            &format!("DELETE FROM pairwise WHERE response_a IN ({old}) OR response_b IN ({old})"),
            [before_ms],
        )?;
        let n = tx.execute("DELETE FROM responses WHERE created_ms < ?1", [before_ms])?;
        tx.commit()?;
        Ok(n as u64)
    }
}
