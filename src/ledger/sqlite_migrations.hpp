#pragma once

// The SQLite ledger's schema, as numbered migrations (run at open by sqlite::migrate). Add a
// change as the next number at the end; never edit one that has shipped. A PostgreSQL ledger
// keeps its own list in the same form.

#include <vector>

#include "../sqlite/sqlite.hpp"

namespace metro::ledger {

const std::vector<sqlite::Migration>& sqlite_migrations();

}  // namespace metro::ledger
