#include "postgres_migrations.hpp"

namespace metro::ledger {

namespace {
// pg_advisory_xact_lock key of the migrations ("metro-migrations" folded into 63 bits).
constexpr const char* kMigrationLock = "SELECT pg_advisory_xact_lock(7305861478522316914)";
}  // namespace

const std::vector<PostgresMigration>& postgres_migrations() {
  // Texts from Service Bus (subjects, ids, bodies, errors) are bytea: PostgreSQL's text holds
  // neither NUL nor invalid UTF-8, and the ledger keeps every byte. `subject_text` is the subject
  // as valid UTF-8 (invalid bytes replaced) for glob filters. Names are text with the "C"
  // collation, so rows page in byte order as in SQLite. Times are milliseconds since the epoch.
  static const std::vector<PostgresMigration> kMigrations = {
      {1, "deferred messages, handler runs, instances, write probe",
       "CREATE TABLE deferred_messages ("
       " topic text COLLATE \"C\" NOT NULL, subscription text COLLATE \"C\" NOT NULL,"
       " sequence_number bigint NOT NULL, generation bigint NOT NULL DEFAULT 0,"
       " subject bytea NOT NULL, subject_text text NOT NULL, message_id bytea NOT NULL,"
       " correlation_id bytea NOT NULL, body bytea NOT NULL, body_truncated bigint NOT NULL,"
       " state text NOT NULL, created bigint NOT NULL, updated bigint NOT NULL,"
       " last_error bytea NOT NULL, enqueued bigint NOT NULL DEFAULT 0,"
       " owner text NOT NULL DEFAULT '', lease_until bigint NOT NULL DEFAULT 0,"
       " PRIMARY KEY (topic, subscription, sequence_number, generation));"
       // No other index starts with (topic, subscription): the planner must not pick one over
       // the primary key for the single-row writes (it did, scanning a whole subscription).
       "CREATE INDEX deferred_messages_state ON deferred_messages (state, updated);"
       "CREATE INDEX deferred_messages_unsettled ON deferred_messages"
       " (topic, subscription, created) WHERE generation = 0 AND state IN ('deferring',"
       " 'deferred', 'running', 'retrying', 'failed', 'orphaned');"
       "CREATE INDEX deferred_messages_owner ON deferred_messages (owner)"
       " WHERE state IN ('deferring', 'deferred', 'running', 'retrying');"
       "CREATE TABLE handler_runs ("
       " topic text COLLATE \"C\" NOT NULL, subscription text COLLATE \"C\" NOT NULL,"
       " sequence_number bigint NOT NULL, generation bigint NOT NULL DEFAULT 0,"
       " handler text COLLATE \"C\" NOT NULL, attempt bigint NOT NULL, outcome text NOT NULL,"
       " started bigint NOT NULL, finished bigint, error bytea NOT NULL,"
       " PRIMARY KEY (topic, subscription, sequence_number, generation, handler, attempt));"
       "CREATE TABLE instances (id text PRIMARY KEY, host text NOT NULL, pid bigint NOT NULL,"
       " started bigint NOT NULL, heartbeat bigint NOT NULL, in_flight bigint NOT NULL,"
       " lease_ms bigint NOT NULL);"
       "CREATE TABLE ledger_probe (id text PRIMARY KEY, at bigint NOT NULL);"},
      // The Celery task id of a run (recorded before the task is sent: a restart picks its
      // outcome up by it) and the times the task retried itself.
      {2, "handler runs: Celery task id and retries",
       "ALTER TABLE handler_runs ADD COLUMN task_id text NOT NULL DEFAULT '';"
       "ALTER TABLE handler_runs ADD COLUMN retries bigint NOT NULL DEFAULT 0;"},
      // The message's W3C trace context (empty when it came before there was one); bytea as it
      // comes from Service Bus.
      {3, "trace context",
       "ALTER TABLE deferred_messages ADD COLUMN trace_parent bytea NOT NULL DEFAULT ''::bytea;"},
      // Failure groups: the last failed run's handler, its normalised error and the group's id,
      // written by record_run (rows parked before are filed at every open). The partial index
      // counts the groups without reading rows of other states.
      {4, "failure groups",
       "ALTER TABLE deferred_messages ADD COLUMN failure_group text COLLATE \"C\" NOT NULL"
       " DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN failure_handler text COLLATE \"C\" NOT NULL"
       " DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN failure_error bytea NOT NULL DEFAULT ''::bytea;"
       "ALTER TABLE deferred_messages ADD COLUMN failure_at bigint NOT NULL DEFAULT 0;"
       "CREATE INDEX deferred_messages_failures ON deferred_messages"
       " (failure_group, state, failure_at) WHERE generation = 0"
       " AND state IN ('failed', 'retrying');"},
      // Bulk jobs: the job, and the keys it acts on with each one's outcome (ok NULL: pending).
      // Filters, reasons and errors come from requests and handlers: bytea.
      {5, "bulk jobs",
       "CREATE TABLE jobs ("
       " id text COLLATE \"C\" PRIMARY KEY, action text NOT NULL, filter bytea NOT NULL,"
       " reason bytea NOT NULL, description bytea NOT NULL, created_by bytea NOT NULL,"
       " state text NOT NULL, total bigint NOT NULL, done bigint NOT NULL,"
       " failed bigint NOT NULL, created bigint NOT NULL, updated bigint NOT NULL,"
       " finished bigint, error bytea NOT NULL);"
       "CREATE INDEX jobs_created ON jobs (created);"
       "CREATE TABLE job_items ("
       " job text COLLATE \"C\" NOT NULL, topic text COLLATE \"C\" NOT NULL,"
       " subscription text COLLATE \"C\" NOT NULL, sequence_number bigint NOT NULL,"
       " generation bigint NOT NULL, ok bigint, error bytea NOT NULL DEFAULT ''::bytea,"
       " PRIMARY KEY (job, topic, subscription, sequence_number, generation));"
       // The keys not acted on yet, in key order, without reading those done.
       "CREATE INDEX job_items_pending ON job_items"
       " (job, topic, subscription, sequence_number, generation) WHERE ok IS NULL;"},
      // Lean completed rows: the body dropped (body_dropped) and the handler runs moved into one
      // field of the row (runs). Superseded records are found for pruning without a full scan.
      // Every message's row is updated several times and pruned in the end: autovacuum visits
      // the two busy tables after 2% of their rows changed (the default waits for 20%, which at
      // millions of rows lets dead versions pile up between visits).
      {6, "lean completed rows, autovacuum of the busy tables",
       "ALTER TABLE deferred_messages ADD COLUMN body_dropped bigint NOT NULL DEFAULT 0;"
       "ALTER TABLE deferred_messages ADD COLUMN runs bytea NOT NULL DEFAULT ''::bytea;"
       "CREATE INDEX deferred_messages_superseded ON deferred_messages (updated)"
       " WHERE generation > 0;"
       "ALTER TABLE deferred_messages SET (autovacuum_vacuum_scale_factor = 0.02,"
       " autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);"
       "ALTER TABLE handler_runs SET (autovacuum_vacuum_scale_factor = 0.02,"
       " autovacuum_vacuum_insert_scale_factor = 0.02);"},
  };
  return kMigrations;
}

int postgres_schema_version(postgres::Connection& c) {
  auto exists = c.query("SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'"
                        " AND schemaname = current_schema()");
  if (exists.integer(0, 0) == 0) return 0;
  auto r = c.query("SELECT coalesce(max(version), 0) FROM schema_migrations");
  return static_cast<int>(r.integer(0, 0));
}

std::vector<int> migrate_postgres(postgres::Connection& c, const std::string& where) {
  const auto& all = postgres_migrations();
  int newest = all.empty() ? 0 : all.back().version;
  std::vector<int> applied;
  while (true) {
    postgres::Transaction tx(c);
    c.exec(kMigrationLock);  // Another instance migrating at the same moment waits here.
    c.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY,"
        " description text NOT NULL, applied bigint NOT NULL)");
    auto version = static_cast<int>(
        c.query("SELECT coalesce(max(version), 0) FROM schema_migrations").integer(0, 0));
    if (version > newest) {
      throw Error("the ledger at " + where + " has schema version " + std::to_string(version) +
                  ", newer than this metro knows (" + std::to_string(newest) +
                  "); run a newer metro on it");
    }
    if (version == newest) {
      tx.commit();
      return applied;
    }
    const auto& m = all.at(static_cast<std::size_t>(version));  // Versions are 1, 2, …
    try {
      c.exec(m.sql);
    } catch (const postgres::PgError& e) {
      throw postgres::PgError("the ledger at " + where + ": migration " +
                                  std::to_string(m.version) + " (" + std::string(m.description) +
                                  ") failed: " + e.what(),
                              e.sqlstate(), e.connection_lost());
    }
    c.query(
        "INSERT INTO schema_migrations (version, description, applied)"
        " VALUES ($1, $2, (extract(epoch from now()) * 1000)::bigint)",
        postgres::Params().int8(m.version).text(m.description));
    tx.commit();
    applied.push_back(m.version);
  }
}

}  // namespace metro::ledger
