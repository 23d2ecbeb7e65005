#include "sqlite_migrations.hpp"

namespace metro::ledger {

const std::vector<sqlite::Migration>& sqlite_migrations() {
  static const std::vector<sqlite::Migration> kMigrations = {
      // 1: the schema the first ledgers were written with (before versions were recorded; IF NOT
      // EXISTS makes it a no-op on such a file).
      {1, "deferred messages and handler runs",
       "CREATE TABLE IF NOT EXISTS deferred_messages ("
       " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
       " subject TEXT NOT NULL, message_id TEXT NOT NULL, correlation_id TEXT NOT NULL,"
       " body BLOB NOT NULL, body_truncated INTEGER NOT NULL, state TEXT NOT NULL,"
       " created INTEGER NOT NULL, updated INTEGER NOT NULL, last_error TEXT NOT NULL,"
       " PRIMARY KEY (topic, subscription, sequence_number));"
       "CREATE INDEX IF NOT EXISTS deferred_messages_state ON deferred_messages (state, updated);"
       "CREATE INDEX IF NOT EXISTS deferred_messages_age ON deferred_messages"
       " (topic, subscription, state, created);"
       "CREATE TABLE IF NOT EXISTS handler_runs ("
       " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
       " handler TEXT NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,"
       " started INTEGER NOT NULL, finished INTEGER, error TEXT NOT NULL,"
       " PRIMARY KEY (topic, subscription, sequence_number, handler, attempt));"},
      // 2: sequence numbers that start again keep earlier messages apart (generation), told by
      // the enqueued time; a table for write probes.
      {2, "generations of a sequence number, enqueued time, write probe",
       "CREATE TABLE deferred_messages_2 ("
       " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
       " generation INTEGER NOT NULL DEFAULT 0,"
       " subject TEXT NOT NULL, message_id TEXT NOT NULL, correlation_id TEXT NOT NULL,"
       " body BLOB NOT NULL, body_truncated INTEGER NOT NULL, state TEXT NOT NULL,"
       " created INTEGER NOT NULL, updated INTEGER NOT NULL, last_error TEXT NOT NULL,"
       " enqueued INTEGER NOT NULL DEFAULT 0,"
       " PRIMARY KEY (topic, subscription, sequence_number, generation));"
       "INSERT INTO deferred_messages_2 (topic, subscription, sequence_number, generation,"
       " subject, message_id, correlation_id, body, body_truncated, state, created, updated,"
       " last_error, enqueued)"
       " SELECT topic, subscription, sequence_number, 0, subject, message_id, correlation_id,"
       " body, body_truncated, state, created, updated, last_error, 0 FROM deferred_messages;"
       "DROP TABLE deferred_messages;"
       "ALTER TABLE deferred_messages_2 RENAME TO deferred_messages;"
       "CREATE INDEX deferred_messages_state ON deferred_messages (state, updated);"
       "CREATE INDEX deferred_messages_age ON deferred_messages"
       " (topic, subscription, state, created);"
       "CREATE TABLE handler_runs_2 ("
       " topic TEXT NOT NULL, subscription TEXT NOT NULL, sequence_number INTEGER NOT NULL,"
       " generation INTEGER NOT NULL DEFAULT 0,"
       " handler TEXT NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,"
       " started INTEGER NOT NULL, finished INTEGER, error TEXT NOT NULL,"
       " PRIMARY KEY (topic, subscription, sequence_number, generation, handler, attempt));"
       "INSERT INTO handler_runs_2 (topic, subscription, sequence_number, generation, handler,"
       " attempt, outcome, started, finished, error)"
       " SELECT topic, subscription, sequence_number, 0, handler, attempt, outcome, started,"
       " finished, error FROM handler_runs;"
       "DROP TABLE handler_runs;"
       "ALTER TABLE handler_runs_2 RENAME TO handler_runs;"
       "CREATE TABLE ledger_probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);"},
      // 3: instances: who handles a message (owner) and until when (lease), and a heartbeat row
      // per process (SQLite: one at a time).
      {3, "owner and lease of a message, instance heartbeats",
       "ALTER TABLE deferred_messages ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;"
       "CREATE INDEX deferred_messages_owner ON deferred_messages (owner, state);"
       "CREATE TABLE instances (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,"
       " started INTEGER NOT NULL, heartbeat INTEGER NOT NULL, in_flight INTEGER NOT NULL,"
       " lease_ms INTEGER NOT NULL);"},
      // 4: the Celery task id of a run (recorded before the task is sent: a restart picks its
      // outcome up by it) and the times the task retried itself.
      {4, "handler runs: Celery task id and retries",
       "ALTER TABLE handler_runs ADD COLUMN task_id TEXT NOT NULL DEFAULT '';"
       "ALTER TABLE handler_runs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;"},
      // The message's W3C trace context ('' when it came before there was one).
      {5, "trace context",
       "ALTER TABLE deferred_messages ADD COLUMN trace_parent TEXT NOT NULL DEFAULT '';"},
      // Failure groups: the last failed run's handler, its normalised error and the group's id,
      // written by record_run (rows parked before are filed at every open).
      {6, "failure groups",
       "ALTER TABLE deferred_messages ADD COLUMN failure_group TEXT NOT NULL DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN failure_handler TEXT NOT NULL DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN failure_error TEXT NOT NULL DEFAULT '';"
       "ALTER TABLE deferred_messages ADD COLUMN failure_at INTEGER NOT NULL DEFAULT 0;"
       // Covers the groups' listing (generation too: SQLite does not count a partial index's
       // predicate as covering its columns).
       "CREATE INDEX deferred_messages_failures ON deferred_messages"
       " (failure_group, state, failure_at, generation, topic, subscription)"
       " WHERE generation = 0 AND state IN ('failed', 'retrying');"},
      // Bulk jobs: the job, and the keys it acts on with each one's outcome (NULL: pending).
      {7, "bulk jobs",
       "CREATE TABLE jobs ("
       " id TEXT PRIMARY KEY, action TEXT NOT NULL, filter TEXT NOT NULL,"
       " reason TEXT NOT NULL, description TEXT NOT NULL, created_by TEXT NOT NULL,"
       " state TEXT NOT NULL, total INTEGER NOT NULL, done INTEGER NOT NULL,"
       " failed INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL,"
       " finished INTEGER, error TEXT NOT NULL);"
       "CREATE INDEX jobs_created ON jobs (created);"
       "CREATE TABLE job_items ("
       " job TEXT NOT NULL, topic TEXT NOT NULL, subscription TEXT NOT NULL,"
       " sequence_number INTEGER NOT NULL, generation INTEGER NOT NULL,"
       " ok INTEGER, error TEXT NOT NULL DEFAULT '',"
       " PRIMARY KEY (job, topic, subscription, sequence_number, generation));"},
      // Lean completed rows: the body dropped (body_dropped) and the handler runs collapsed into
      // one field of the row (runs). The indexes only unsettled rows need leave settled ones
      // out (the age of the oldest unsettled message; the owner's, as leases are only held on
      // unfinished rows): at high volume nearly every row is a completed one. Superseded records
      // are found for pruning without a full scan.
      {8, "lean completed rows, partial indexes",
       "ALTER TABLE deferred_messages ADD COLUMN body_dropped INTEGER NOT NULL DEFAULT 0;"
       "ALTER TABLE deferred_messages ADD COLUMN runs BLOB NOT NULL DEFAULT '';"
       "DROP INDEX deferred_messages_age;"
       "CREATE INDEX deferred_messages_age ON deferred_messages"
       " (topic, subscription, state, created)"
       " WHERE state IN ('deferring', 'deferred', 'running', 'retrying', 'failed', 'orphaned');"
       "DROP INDEX deferred_messages_owner;"
       "CREATE INDEX deferred_messages_owner ON deferred_messages (owner)"
       " WHERE state IN ('deferring', 'deferred', 'running', 'retrying');"
       "CREATE INDEX deferred_messages_superseded ON deferred_messages (updated)"
       " WHERE generation > 0;"},
  };
  return kMigrations;
}

}  // namespace metro::ledger
