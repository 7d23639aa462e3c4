//! The statements SQLite and PostgreSQL run word for word. Both accept `$N` parameters, and the
//! two schemas keep the same columns and types (times as 64-bit milliseconds, JSON as text), so
//! one text serves both; each backend only binds and runs it. What the databases do differently
//! (taking the write lock, picking a queued task, numbering events, listing by state) stays in
//! the backend's own module.

use crate::rows::{select_tasks, select_tokens, task_columns, token_columns};

/// The states in which a worker holds a task: claimed, not yet ended. As SQL.
macro_rules! held_states {
    () => {
        "('preparing', 'running', 'waiting', 'verifying', 'handing_off')"
    };
}

/// `$1`..`$17` as [`crate::rows::TaskColumns::bind`] binds them, `$18` cancel_requested.
pub(crate) const INSERT_TASK: &str = "INSERT INTO tasks (id, state, spec, repo, created_at, \
     updated_at, started_at, finished_at, base_commit, branch, head_commit, summary, error, turns, \
     input_tokens, cached_input_tokens, output_tokens, cancel_requested) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Every column but `cancel_requested` (request_cancel's) and `worker`/`lease_expires_at`
/// (the queue's). `$1`..`$17` as [`crate::rows::TaskColumns::bind`] binds them.
pub(crate) const UPDATE_TASK: &str = "UPDATE tasks SET state = $2, spec = $3, repo = $4, \
     created_at = $5, updated_at = $6, started_at = $7, finished_at = $8, base_commit = $9, \
     branch = $10, head_commit = $11, summary = $12, error = $13, turns = $14, \
     input_tokens = $15, cached_input_tokens = $16, output_tokens = $17 \
     WHERE id = $1";

pub(crate) const GET_TASK: &str = select_tasks!("WHERE id = $1");

/// `$1` the escaped pattern, `$2` match as prefix, `$3` match as short id, `$4` limit.
pub(crate) const FIND_TASKS: &str = select_tasks!(
    "WHERE ($2 AND id LIKE $1 || '%' ESCAPE '\\') \
        OR ($3 AND id LIKE '%' || $1 ESCAPE '\\') \
     ORDER BY id DESC LIMIT $4"
);

pub(crate) const COUNT_TASKS: &str = "SELECT state, COUNT(*) FROM tasks GROUP BY state";

/// Sums over every task: input, cached input and output tokens, turns, the tasks that ran and
/// ended, and their run time in milliseconds. Cast because PostgreSQL sums BIGINTs as NUMERIC.
pub(crate) const TASK_TOTALS: &str = "SELECT \
     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
     CAST(COALESCE(SUM(turns), 0) AS BIGINT), \
     COUNT(CASE WHEN started_at IS NOT NULL AND finished_at IS NOT NULL THEN 1 END), \
     CAST(COALESCE(SUM(CASE WHEN started_at IS NOT NULL AND finished_at IS NOT NULL \
         AND finished_at > started_at THEN finished_at - started_at END), 0) AS BIGINT) \
     FROM tasks";

/// Event totals, SQLite's JSON functions: the dollars of `ended` events and the count of
/// `error` events of kind `sandbox`. The two databases share no JSON function, hence one text
/// each ([`POSTGRES_EVENT_TOTALS`]).
pub(crate) const SQLITE_EVENT_TOTALS: &str = "SELECT \
     CAST(COALESCE(SUM(CASE WHEN type = 'ended' THEN json_extract(body, '$.cost_usd') END), 0) \
         AS REAL), \
     COUNT(CASE WHEN type = 'error' AND json_extract(body, '$.kind') = 'sandbox' THEN 1 END) \
     FROM events WHERE type IN ('ended', 'error')";

/// [`SQLITE_EVENT_TOTALS`] in PostgreSQL's JSON operators.
pub(crate) const POSTGRES_EVENT_TOTALS: &str = "SELECT \
     CAST(COALESCE(SUM(CASE WHEN type = 'ended' \
         THEN CAST(CAST(body AS JSONB) ->> 'cost_usd' AS DOUBLE PRECISION) END), 0) \
         AS DOUBLE PRECISION), \
     COUNT(CASE WHEN type = 'error' AND CAST(body AS JSONB) ->> 'kind' = 'sandbox' THEN 1 END) \
     FROM events WHERE type IN ('ended', 'error')";

/// `$1` id, `$2` worker, `$3` now, `$4` lease expiry.
pub(crate) const CLAIM_TASK: &str = "UPDATE tasks SET state = 'preparing', worker = $2, \
     lease_expires_at = $4, started_at = $3, updated_at = $3 \
     WHERE id = $1 AND state = 'queued'";

/// `$1` id, `$2` worker, `$3` new lease expiry.
pub(crate) const RENEW_LEASE: &str = concat!(
    "UPDATE tasks SET lease_expires_at = $3 WHERE id = $1 AND worker = $2 AND state IN ",
    held_states!()
);

/// `$1` id, `$2` worker, `$3` now.
pub(crate) const RELEASE_TASK: &str = concat!(
    "UPDATE tasks SET state = 'queued', worker = NULL, lease_expires_at = NULL, \
     updated_at = $3 WHERE id = $1 AND worker = $2 AND state IN ",
    held_states!()
);

/// `$1` now. A held task without a lease can only come from before leases existed: it counts
/// as lapsed.
pub(crate) const EXPIRED_TASKS: &str = concat!(
    select_tasks!("WHERE state IN "),
    held_states!(),
    " AND COALESCE(lease_expires_at, 0) < $1 ORDER BY id"
);

pub(crate) const ANY_QUEUED: &str = "SELECT EXISTS (SELECT 1 FROM tasks WHERE state = 'queued')";

/// `$1` id.
pub(crate) const CANCEL_STATE: &str = "SELECT state, cancel_requested FROM tasks WHERE id = $1";

/// `$1` id, `$2` summary, `$3` now.
pub(crate) const CANCEL_QUEUED: &str = "UPDATE tasks SET state = 'cancelled', \
     cancel_requested = TRUE, summary = $2, finished_at = $3, updated_at = $3 WHERE id = $1";

/// `$1` id, `$2` now.
pub(crate) const FLAG_CANCEL: &str =
    "UPDATE tasks SET cancel_requested = TRUE, updated_at = $2 WHERE id = $1";

/// `$1` task id, `$2` after seq, `$3` limit.
pub(crate) const EVENTS: &str =
    "SELECT seq, at, body FROM events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// `$1` id, `$2` name, `$3` scope, `$4` secret hash, `$5` created_at, `$6` repositories (JSON).
pub(crate) const INSERT_TOKEN: &str = "INSERT INTO tokens (id, name, scope, secret_hash, \
     created_at, last_used_at, revoked_at, repos) VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6)";

/// `$1` secret hash.
pub(crate) const TOKEN_BY_HASH: &str =
    select_tokens!("WHERE secret_hash = $1 AND revoked_at IS NULL");

/// `$1` id, `$2` now. Returns the token as it is after recording the use.
pub(crate) const TOUCH_TOKEN: &str = concat!(
    "UPDATE tokens SET last_used_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING ",
    token_columns!()
);

pub(crate) const LIST_TOKENS: &str = select_tokens!("ORDER BY created_at DESC, id DESC");

/// `$1` id, `$2` now.
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

/// `$1` name, `$2` sealed value, `$3` now. Inserts or replaces.
pub(crate) const PUT_SECRET: &str = "INSERT INTO secrets (name, sealed, updated_at) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at";

/// Byte order of the names on both (PostgreSQL's column is `COLLATE "C"`).
pub(crate) const SECRETS: &str =
    "SELECT name, sealed, updated_at, repos FROM secrets ORDER BY name";

/// `$1` name, `$2` the repositories (JSON).
pub(crate) const SET_SECRET_REPOS: &str = "UPDATE secrets SET repos = $2 WHERE name = $1";

/// `$1` name.
pub(crate) const DELETE_SECRET: &str = "DELETE FROM secrets WHERE name = $1";

/// `$1` name, `$2` location, `$3` created_at, `$4` credential, `$5` github_api, `$6` github_app.
pub(crate) const INSERT_REPO: &str = "INSERT INTO repos (name, location, created_at, credential, \
     github_api, github_app) VALUES ($1, $2, $3, $4, $5, $6)";

/// Byte order of the names on both (PostgreSQL's column is `COLLATE "C"`).
pub(crate) const REPOS: &str = "SELECT name, location, created_at, credential, github_api, github_app FROM repos \
     ORDER BY name";

/// `$1` name.
pub(crate) const DELETE_REPO: &str = "DELETE FROM repos WHERE name = $1";

/// `$1` delivery id, `$2` now. Inserts nothing for an id seen before.
pub(crate) const RECORD_DELIVERY: &str = "INSERT INTO webhook_deliveries (id, received_at) \
     VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
/// `$1` the task ids as a JSON array: per task, the `ended` event's dollars and the check runs
/// that passed and failed.
pub(crate) const SQLITE_TASK_OUTCOMES: &str = "SELECT task_id, \
     CAST(MAX(CASE WHEN type = 'ended' THEN json_extract(body, '$.cost_usd') END) AS REAL), \
     COUNT(CASE WHEN type = 'command_finished' AND json_extract(body, '$.phase') = 'check' \
         AND json_extract(body, '$.ok') = 1 THEN 1 END), \
     COUNT(CASE WHEN type = 'command_finished' AND json_extract(body, '$.phase') = 'check' \
         AND json_extract(body, '$.ok') = 0 THEN 1 END) \
     FROM events WHERE task_id IN (SELECT value FROM json_each($1)) \
         AND type IN ('ended', 'command_finished') \
     GROUP BY task_id";

/// [`SQLITE_TASK_OUTCOMES`] in PostgreSQL's JSON operators.
pub(crate) const POSTGRES_TASK_OUTCOMES: &str = "SELECT task_id, \
     MAX(CASE WHEN type = 'ended' \
         THEN CAST(CAST(body AS JSONB) ->> 'cost_usd' AS DOUBLE PRECISION) END), \
     COUNT(CASE WHEN type = 'command_finished' AND CAST(body AS JSONB) ->> 'phase' = 'check' \
         AND CAST(body AS JSONB) ->> 'ok' = 'true' THEN 1 END), \
     COUNT(CASE WHEN type = 'command_finished' AND CAST(body AS JSONB) ->> 'phase' = 'check' \
         AND CAST(body AS JSONB) ->> 'ok' = 'false' THEN 1 END) \
     FROM events WHERE task_id IN (SELECT json_array_elements_text($1::json)) \
         AND type IN ('ended', 'command_finished') \
     GROUP BY task_id";

/// `$1` task id, `$2` when to try again (ms), `$3` why the last attempt failed.
pub(crate) const SCHEDULE_FORGE_RETRY: &str = "INSERT INTO forge_retries (task_id, attempts, \
     next_at, reason) VALUES ($1, 1, $2, $3) ON CONFLICT (task_id) DO UPDATE SET \
     attempts = forge_retries.attempts + 1, next_at = $2, reason = $3 RETURNING attempts";

/// `$1` now (ms), `$2` held until (ms), `$3` the most to take. The outer `next_at` check makes
/// a concurrent claimer that read the same rows skip those another took first.
pub(crate) const CLAIM_FORGE_RETRIES: &str = "UPDATE forge_retries SET next_at = $2 \
     WHERE next_at <= $1 AND task_id IN (SELECT task_id FROM forge_retries WHERE next_at <= $1 \
     ORDER BY next_at LIMIT $3) RETURNING task_id, attempts, reason";

/// `$1` task id.
pub(crate) const FINISH_FORGE_RETRY: &str = "DELETE FROM forge_retries WHERE task_id = $1";

#[cfg(test)]
mod tests {
    use nightshift_protocol::TaskState;

    #[test]
    fn held_states_are_the_claimed_unfinished_ones() {
        let held: Vec<String> = TaskState::ALL
            .into_iter()
            .filter(|state| *state != TaskState::Queued && !state.is_terminal())
            .map(|state| format!("'{state}'"))
            .collect();
        assert_eq!(held_states!(), format!("({})", held.join(", ")));
    }
}
