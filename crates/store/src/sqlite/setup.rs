//! Creating the SQLite database and migrating it, one process at a time: switching to WAL cannot
//! wait on `busy_timeout`, and sqlx does not lock migrations on SQLite, so both happen under an
//! exclusive lock on a file beside the database.

use std::path::{Path, PathBuf};

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::StoreError;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates the database in WAL mode and runs the migrations, one process at a time.
pub(super) async fn set_up(
    lock_path: &Path,
    path: &Path,
    options: SqliteConnectOptions,
) -> Result<(), StoreError> {
    let _lock = SetupLock::acquire(lock_path.to_path_buf()).await?;
    // A pool of one rather than a bare connection: the migrator's future over `&mut
    // SqliteConnection` is not `Send` for every lifetime, which would keep callers from spawning
    // `open`.
    let setup = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .map_err(|cause| {
            StoreError::database(format!("opening the database {}", path.display()), cause)
        })?;
    let migrated = MIGRATOR
        .run(&setup)
        .await
        .map_err(|cause| StoreError::Migrate {
            database: path.display().to_string(),
            cause,
        });
    setup.close().await;
    migrated
}

/// An exclusive advisory lock on a file, released when dropped (the file is closed).
struct SetupLock {
    _file: std::fs::File,
}

impl SetupLock {
    async fn acquire(path: PathBuf) -> Result<SetupLock, StoreError> {
        let locking = path.clone();
        let locked = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&locking)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        locked
            .map(|file| SetupLock { _file: file })
            .map_err(|cause| StoreError::Io {
                action: "lock",
                path,
                cause,
            })
    }
}
