#pragma once

// Durable emulator state: every stored message with its state, and each entity's next sequence
// number, in a SQLite file (WAL). The server writes a batch of changes before it acknowledges
// any of them, so a message that was accepted survives a crash or restart.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

struct sqlite3;

namespace metro::emulator {

struct JournalRow {
  std::string entity;
  std::int64_t sequence_number = 0;
  std::string bytes;  ///< The message as stored: annotations as sent, bare message as received.
  std::int64_t enqueued = 0;
  std::int64_t expires = 0;  ///< 0: never.
  std::int64_t scheduled_for = 0;
  std::int64_t delivery_count = 0;
  int state = 0;
};

class Journal {
 public:
  /// Opens (creating) `<directory>/emulator.db`. Throws `metro::Error` when it cannot.
  explicit Journal(const std::filesystem::path& directory);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  /// One write transaction: BEGIN when made, ROLLBACK when destroyed without `commit()`, so a
  /// failed write leaves the journal as it was at the last commit and ready for the next BEGIN.
  class Transaction {
   public:
    explicit Transaction(Journal& journal);
    ~Transaction();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    /// Throws `metro::Error` when the commit fails (the destructor then rolls back).
    void commit();

   private:
    Journal& journal_;
    bool open_ = true;
  };

  // Within a Transaction; each throws `metro::Error` when SQLite refuses (disk full, read-only…).
  void put(const JournalRow& row);
  void erase(const std::string& entity, std::int64_t sequence_number);
  void set_next_sequence(const std::string& entity, std::int64_t next);

  /// The database file, for messages.
  const std::filesystem::path& path() const { return path_; }
  /// Caps the database at `pages` pages (SQLite's max_page_count): writes beyond fail as they do
  /// on a full disk. For tests.
  void limit_pages(std::int64_t pages);
  /// Every write fails as on a read-only file (SQLite's query_only) until called with false. A
  /// read-only failure leaves the transaction open, unlike a full disk. For tests.
  void refuse_writes(bool refuse);

  void load(const std::function<void(const JournalRow&)>& row,
            const std::function<void(const std::string&, std::int64_t)>& next_sequence);

 private:
  void exec(const char* sql);
  struct Close {
    void operator()(sqlite3* db) const;
  };
  std::filesystem::path path_;
  std::unique_ptr<sqlite3, Close> db_;  // declared before the statements: closed after them
  struct Statements;
  std::unique_ptr<Statements> statements_;
};

}  // namespace metro::emulator
