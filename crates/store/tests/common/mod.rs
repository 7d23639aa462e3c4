//! What the store's tests share: a store of either backend in a fresh place of its own, tasks
//! to put in it, and [`on_every_backend!`], which runs one behavioural test against SQLite and
//! PostgreSQL alike.
//!
//! PostgreSQL tests use the server in `NIGHTSHIFT_TEST_DATABASE_URL` (read, never set). Each
//! creates a database of its own, named after a fresh id, and drops it when done, so that they
//! run in parallel and leave nothing behind. Without the variable they say they were skipped and
//! pass.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::sync::Arc;

use jiff::Timestamp;
use nightshift_protocol::{Task, TaskId, TaskSpec};
use nightshift_store::{Blobs, PostgresStore, SqliteStore, Store};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tempfile::TempDir;

/// The variable naming the PostgreSQL server for tests.
pub const DATABASE_URL_VAR: &str = "NIGHTSHIFT_TEST_DATABASE_URL";

/// Runs each named `async fn(TestStore)` once per backend, as `sqlite::<name>` and
/// `postgres::<name>`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::common::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(t) = $crate::common::postgres().await else { return };
                    super::$name(t).await;
                }
            )*
        }
    };
}

/// A store in a place of its own (a temporary home; for PostgreSQL also a database), removed
/// when dropped.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub home: TempDir,
    /// Dropped after `store` and `home`, as fields drop in order.
    database: Option<TestDatabase>,
}

impl TestStore {
    /// Another store on the same database, as a second process or machine would have.
    pub async fn another(&self) -> Arc<dyn Store> {
        match &self.database {
            None => Arc::new(SqliteStore::open(self.home.path()).await.unwrap()),
            Some(database) => Arc::new(
                PostgresStore::connect_with(database.options(), self.blobs())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// The blobs of the store (and of [`TestStore::another`]): the home's `blobs` directory.
    pub fn blobs(&self) -> Blobs {
        Blobs::local(&self.home.path().join("blobs")).unwrap()
    }

    pub fn is_postgres(&self) -> bool {
        self.database.is_some()
    }
}

pub async fn sqlite() -> TestStore {
    let home = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(home.path()).await.unwrap();
    TestStore {
        store: Arc::new(store),
        home,
        database: None,
    }
}

/// A PostgreSQL store in a new database, or `None` (after saying so) when no server is set.
pub async fn postgres() -> Option<TestStore> {
    let database = TestDatabase::create().await?;
    let home = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(&home.path().join("blobs")).unwrap();
    let store = PostgresStore::connect_with(database.options(), blobs)
        .await
        .unwrap();
    Some(TestStore {
        store: Arc::new(store),
        home,
        database: Some(database),
    })
}

/// A database of one test's own on the test server, dropped with this.
pub struct TestDatabase {
    server: PgConnectOptions,
    name: String,
}

impl TestDatabase {
    /// Creates it, or says that PostgreSQL tests are skipped and returns `None`.
    pub async fn create() -> Option<TestDatabase> {
        let Ok(url) = std::env::var(DATABASE_URL_VAR) else {
            println!("skipped: {DATABASE_URL_VAR} is not set");
            return None;
        };
        let server = PgConnectOptions::from_str(&url).unwrap();
        let name = format!("nightshift_test_{}", TaskId::new());
        let mut admin = PgConnection::connect_with(&server).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Some(TestDatabase { server, name })
    }

    pub fn options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// A URL of this database, for code that takes one.
    pub fn url(&self) -> String {
        let url = std::env::var(DATABASE_URL_VAR).unwrap();
        let url = url.split('?').next().unwrap();
        let (server, _) = url.rsplit_once('/').unwrap();
        format!("{server}/{}", self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: use a runtime of
        // our own on a thread of our own.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = PgConnection::connect_with(&server).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!(
                "could not drop the test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

pub fn spec(prompt: &str) -> TaskSpec {
    // From JSON, so that optional fields added later keep their defaults here.
    serde_json::from_value(serde_json::json!({
        "repo": "/src/demo",
        "base": "main",
        "prompt": prompt,
        "model": "openai:gpt-4.1",
        "max_turns": TaskSpec::DEFAULT_MAX_TURNS,
    }))
    .unwrap()
}

/// Now, at the millisecond precision the store keeps, so that tasks compare equal after a
/// round trip.
pub fn now() -> Timestamp {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap()
}

/// A queued task with a fresh id (later than every id made before it).
pub fn queued(prompt: &str) -> Task {
    Task::queued(TaskId::new(), spec(prompt), now())
}

/// Stores a new queued task and returns it.
pub async fn create(store: &dyn Store, prompt: &str) -> Task {
    let task = queued(prompt);
    store.create_task(&task).await.unwrap();
    task
}
