# Every third-party library comes from Debian packages (script/bootstrap installs them).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(OpenSSL 3 REQUIRED)
find_package(tomlplusplus 3 REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(spdlog REQUIRED)
find_package(SQLite3 REQUIRED)
pkg_check_modules(RE2 REQUIRED IMPORTED_TARGET re2)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)  # the Celery handlers' Redis
find_package(CLI11 REQUIRED)  # metro::app is the command line as a library

# Qpid Proton ships no CMake package config and its C++ pkg-config file needs .pc files Debian
# does not ship; find the headers and libraries directly and wrap them in one target.
find_path(PROTON_INCLUDE_DIR proton/container.hpp REQUIRED)
find_library(PROTON_CPP_LIBRARY qpid-proton-cpp REQUIRED)
find_library(PROTON_LIBRARY qpid-proton REQUIRED)
if(NOT TARGET metro_proton)
  add_library(metro_proton INTERFACE)
  target_include_directories(metro_proton SYSTEM INTERFACE ${PROTON_INCLUDE_DIR})
  target_link_libraries(metro_proton INTERFACE ${PROTON_CPP_LIBRARY} ${PROTON_LIBRARY})
endif()
