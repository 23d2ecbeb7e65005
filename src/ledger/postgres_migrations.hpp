#pragma once

// The PostgreSQL ledger's schema, as numbered migrations, run at open by `migrate_postgres`
// (each once, in its own transaction, under an advisory lock so that instances starting at the
// same moment apply each exactly once; recorded in the table `schema_migrations`). Add a change
// as the next number at the end; never edit one that has shipped.

#include <string_view>
#include <vector>

#include "../postgres/postgres.hpp"

namespace metro::ledger {

struct PostgresMigration {
  int version;
  std::string_view description;
  std::string_view sql;
};

const std::vector<PostgresMigration>& postgres_migrations();

/// The last migration applied (0 when none), without changing anything.
int postgres_schema_version(postgres::Connection& c);

/// Applies what is pending; returns the versions applied by this call. Throws `metro::Error`
/// when the database is newer than this metro knows, `postgres::PgError` when one fails (its
/// transaction is rolled back, earlier ones stay).
std::vector<int> migrate_postgres(postgres::Connection& c, const std::string& where);

}  // namespace metro::ledger
