//! Choosing the backends from configuration: every binary (CLI, server, worker) opens its store
//! through [`open_store`] and its blobs through [`open_blobs`], so that a connection string and
//! a blob URL are all it takes to move from a single machine's SQLite file and blobs directory
//! to a PostgreSQL database and an object store bucket shared by many.

use std::path::Path;
use std::sync::Arc;

use crate::{Blobs, PostgresStore, SqliteStore, Store, StoreError};

/// The blobs directory inside the nightshift home, the default for either backend.
pub(crate) const BLOBS_DIR: &str = "blobs";

/// Opens the store `database` names (the CLI passes `NIGHTSHIFT_DATABASE_URL`), keeping blobs
/// in `blobs` (see [`open_blobs`]):
/// - `None`, or a `sqlite:` URL: the SQLite store in `home` (the URL's path is not used: the
///   database always lives in the nightshift home);
/// - `postgres://…` or `postgresql://…`: that PostgreSQL database.
///
/// Anything else is refused with a message naming the accepted forms.
pub async fn open_store(
    database: Option<&str>,
    blobs: Blobs,
    home: &Path,
) -> Result<Arc<dyn Store>, StoreError> {
    let Some(url) = database.map(str::trim).filter(|url| !url.is_empty()) else {
        return Ok(Arc::new(SqliteStore::open_with_blobs(home, blobs).await?));
    };
    match scheme(url) {
        Some("sqlite") => Ok(Arc::new(SqliteStore::open_with_blobs(home, blobs).await?)),
        Some("postgres" | "postgresql") => {
            Ok(Arc::new(PostgresStore::connect(url, blobs).await?))
        }
        _ => Err(StoreError::database(
            "choosing the database",
            sqlx::Error::Configuration(
                format!(
                    "`{}` is not a database URL nightshift knows: use postgres://USER:PASSWORD@HOST/NAME, \
                     or leave NIGHTSHIFT_DATABASE_URL unset for the SQLite file in the nightshift home",
                    without_credentials(url)
                )
                .into(),
            ),
        )),
    }
}

/// Opens the blobs `url` names (the CLI passes `NIGHTSHIFT_BLOB_URL`, and the process
/// environment as `env` for the `AWS_*` settings of an `s3://` URL):
/// - `None` (or blank): the directory `blobs` in `home`, created if missing;
/// - `s3://BUCKET[/PREFIX]` or `file:///PATH`: see [`Blobs::from_url`].
///
/// Sends nothing over the network; [`Blobs::check`] does. Anything else is refused with a
/// message naming the accepted forms.
pub fn open_blobs<I, K, V>(url: Option<&str>, home: &Path, env: I) -> Result<Blobs, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    match url.map(str::trim).filter(|url| !url.is_empty()) {
        None => Blobs::local(&home.join(BLOBS_DIR)),
        Some(url) => Blobs::from_url(url, env),
    }
}

/// The URL's scheme, lowercase.
fn scheme(url: &str) -> Option<&'static str> {
    let (scheme, _) = url.split_once(':')?;
    ["sqlite", "postgres", "postgresql"]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(scheme))
}

/// The URL with anything before an `@` of its authority (user and password) and its query
/// (which could carry a key) left out, for messages.
pub(crate) fn without_credentials(url: &str) -> String {
    let (url, query) = match url.split_once(['?', '#']) {
        Some((url, _)) => (url, "?…"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url}{query}");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{path}{query}"),
        None => format!("{scheme}://{authority}{path}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_no_credentials() {
        assert_eq!(
            without_credentials("postgres://u:pw@db.internal:5432/ns"),
            "postgres://…@db.internal:5432/ns"
        );
        assert_eq!(
            without_credentials("s3://bucket/pre@fix?secret_access_key=abc"),
            "s3://bucket/pre@fix?…"
        );
        assert_eq!(without_credentials("s3://bucket/p"), "s3://bucket/p");
    }

    #[test]
    fn schemes_are_recognised_in_any_case() {
        assert_eq!(scheme("postgres://h/db"), Some("postgres"));
        assert_eq!(scheme("PostgreSQL://h/db"), Some("postgresql"));
        assert_eq!(scheme("sqlite:nightshift.db"), Some("sqlite"));
        assert_eq!(scheme("mysql://h/db"), None);
        assert_eq!(scheme("nonsense"), None);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_credentials("mysql://me:secret@db:3306/x"),
            "mysql://…@db:3306/x"
        );
        assert_eq!(without_credentials("mysql://db/x"), "mysql://db/x");
    }
}
