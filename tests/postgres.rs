//! PostgreSQL for real: the test starts its own server from Debian's `postgresql` package in a
//! temporary directory (as the `postgres` user when run as root: the server refuses root), then
//! two `pipehost serve` processes share it: a user's variant and feedback are seen by both, and
//! with the database stopped answers still flow while the drops are counted.
//!
//! Without the package the test says so and passes, unless PIPEHOST_REQUIRE_POSTGRES is set
//! (.ci/run sets it and installs the package).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server in a temporary directory, stopped when dropped.
struct Pg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Pg {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(bin: PathBuf) -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = output(Command::new("id").arg("-u")) == "0";
        if as_postgres {
            let uid: u32 = output(Command::new("id").args(["-u", "postgres"])).parse().unwrap();
            let gid: u32 = output(Command::new("id").args(["-g", "postgres"])).parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pg = Pg { bin, dir, port: free_port(), as_postgres };
        let data = pg.data();
        output(
            pg.command("initdb")
                .args(["-A", "trust", "-U", "pipehost", "-E", "UTF8", "--no-sync", "-D"])
                .arg(&data),
        );
        pg.ctl("start");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", &options]);
        if action == "stop" {
            cmd.args(["-m", "fast"]);
        }
        output(cmd.arg(action));
    }

    fn url(&self) -> String {
        format!("postgres://pipehost@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]).output();
    }
}

/// A `pipehost serve --model echo` process, killed when dropped.
struct Pipehost {
    child: Child,
    port: u16,
}

impl Drop for Pipehost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(root: &Path, db: &str) -> Pipehost {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(["serve", "--model", "echo", "--no-watch", "--addr", &format!("127.0.0.1:{port}"), "--db", db])
        .arg("--pipelines")
        .arg(root.join("pipelines"))
        .arg("--experiments")
        .arg(root.join("experiments"))
        .arg("--plugins")
        .arg(support::components_dir())
        .env("PIPEHOST_CACHE_DIR", support::test_cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Pipehost { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http().get(p.url("/readyz")).send().await
            && r.status() == 200
        {
            return p;
        }
        assert!(Instant::now() < deadline, "pipehost on port {port} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Pipehost {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        http().post(self.url(path)).body(body.to_string()).send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        http().get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    /// Asks experiment `ab` as `user`: (response id, variant).
    async fn ask(&self, user: &str) -> (String, String) {
        let body = json!({"model": "ab", "user": user, "messages": [{"role": "user", "content": "hello."}]});
        let r = self.post("/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        (v["id"].as_str().unwrap().to_string(), v["pipehost"]["variant"].as_str().unwrap().to_string())
    }
}

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_store() {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var_os("PIPEHOST_REQUIRE_POSTGRES").is_none(),
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin) and PIPEHOST_REQUIRE_POSTGRES is set"
        );
        eprintln!("skipping: PostgreSQL is not installed (apt-get install postgresql)");
        return;
    };
    let pg = Pg::start(bin);
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("pipelines")).unwrap();
    std::fs::create_dir_all(root.path().join("experiments")).unwrap();
    let poem = support::server::POEM;
    std::fs::write(root.path().join("pipelines/poem.yaml"), poem).unwrap();
    std::fs::write(root.path().join("pipelines/poem-warm.yaml"), format!("{poem}  - plugin: tone\n"))
        .unwrap();
    std::fs::write(
        root.path().join("experiments/ab.yaml"),
        "variants:\n  - pipeline: poem\n  - pipeline: poem-warm\n    name: warm\n",
    )
    .unwrap();
    // Both start at once: the migrations must not trip over each other.
    let url = pg.url();
    let (a, b) = tokio::join!(serve(root.path(), &url), serve(root.path(), &url));

    for u in 0..12 {
        let user = format!("user-{u}");
        let (id_a, variant_a) = a.ask(&user).await;
        let (id_b, variant_b) = b.ask(&user).await;
        assert_eq!(variant_a, variant_b, "{user} gets the same variant from both replicas");
        // A's answer, rated through B, is seen by A (once A's writer has committed it: reading
        // it through A first waits for that).
        assert_eq!(a.get(&format!("/v1/responses/{id_a}")).await["id"], id_a.as_str());
        let r = b.post("/v1/feedback", &json!({"response_id": id_a, "value": u % 2})).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let seen = a.get(&format!("/v1/responses/{id_a}")).await;
        assert_eq!(seen["feedback"][0]["value"], f64::from(u % 2), "{seen}");
        assert_eq!(b.get(&format!("/v1/responses/{id_b}")).await["user"], user.as_str());
    }
    // One store, one report, whichever replica is asked.
    let ra = a.get("/v1/experiments/ab").await["results"].clone();
    let rb = b.get("/v1/experiments/ab").await["results"].clone();
    assert_eq!(ra, rb);
    let requests: u64 =
        ra["variants"].as_array().unwrap().iter().map(|v| v["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 24, "{ra}");
    let thumbs: u64 =
        ra["variants"].as_array().unwrap().iter().filter_map(|v| v["feedback"]["thumbs"]["n"].as_u64()).sum();
    assert_eq!(thumbs, 12, "{ra}");

    // The database goes away: answers still flow, the drops are counted, feedback says why.
    pg.ctl("stop");
    for u in 0..5 {
        a.ask(&format!("down-{u}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http().get(a.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if support::server::metric_value(
            &metrics,
            "pipehost_log_records_dropped_total{reason=\"store_error\"}",
        ) >= 5.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (id, _) = a.ask("down-x").await;
    let r = a.post("/v1/feedback", &json!({"response_id": id, "value": 1})).await;
    assert_eq!(r.status(), 503);
    // Back up: logging resumes on a new connection.
    pg.ctl("start");
    let (id, _) = a.ask("back").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = b.get(&format!("/v1/responses/{id}")).await;
        if v["id"] == id.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "not logged after the database came back: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
