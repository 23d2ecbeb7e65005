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

  void begin();
  void put(const JournalRow& row);
  void erase(const std::string& entity, std::int64_t sequence_number);
  void set_next_sequence(const std::string& entity, std::int64_t next);
  void commit();

  void load(const std::function<void(const JournalRow&)>& row,
            const std::function<void(const std::string&, std::int64_t)>& next_sequence);

 private:
  void exec(const char* sql);
  sqlite3* db_ = nullptr;
  struct Statements;
  std::unique_ptr<Statements> statements_;
};

}  // namespace metro::emulator
