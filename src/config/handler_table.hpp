#pragma once

// One `[[subscriptions.handlers]]` table of the settings file: which way the handler runs (exactly
// one of handler, exec, http, python, celery), its subject matcher, retries and completion; and
// the helpers the other tables share with it.
// Thread-safety: functions of their arguments only.

#include <initializer_list>
#include <optional>
#include <string_view>

#include <metro/config/config.hpp>

#include "../settings/table_reader.hpp"

namespace metro::config {

/// Sets `out` to the value matching the key's choice, when the key is there and valid.
template <typename Enum>
void read_choice(settings::TableReader& reader, std::string_view key,
                 std::initializer_list<std::string_view> choices,
                 std::initializer_list<Enum> values, Enum& out) {
  if (auto index = reader.choice(key, choices)) out = *(values.begin() + *index);
}

/// Queue and task names go into Redis keys and Celery headers: printable, no spaces.
bool is_celery_name(std::string_view name);

/// Reads one handler table; nullopt when it has errors (reported through `r`).
std::optional<HandlerOptions> read_handler(settings::TableReader& r);

}  // namespace metro::config
