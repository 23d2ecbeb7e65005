# The third-party libraries metro links, all from Debian packages (script/bootstrap installs
# them). This one file serves metro's own build and `find_package(metro)`: it is installed beside
# metroConfig.cmake, which includes it with METRO_FIND_AS_DEPENDENCY set, so that the installed
# static libraries find what they link. Add a dependency here with metro_find_package() or
# metro_pkg_module(), never with a bare find_package(), or an installed metro cannot be linked.

include(CMakeFindDependencyMacro)

# find_package(), REQUIRED in metro's build; find_dependency() (which forwards QUIET/REQUIRED and
# returns from this file on failure) in find_package(metro).
macro(metro_find_package)
  if(METRO_FIND_AS_DEPENDENCY)
    find_dependency(${ARGV})
  else()
    find_package(${ARGV} REQUIRED)
  endif()
endmacro()

# A pkg-config module as the imported target PkgConfig::<prefix>.
macro(metro_pkg_module prefix module)
  if(NOT TARGET PkgConfig::${prefix})
    pkg_check_modules(${prefix} QUIET IMPORTED_TARGET ${module})
    if(NOT ${prefix}_FOUND)
      set(_metro_missing "pkg-config module '${module}' not found")
      if(METRO_FIND_AS_DEPENDENCY)
        set(metro_NOT_FOUND_MESSAGE "${_metro_missing}")
        set(metro_FOUND FALSE)
        return()
      endif()
      message(FATAL_ERROR "${_metro_missing}")
    endif()
  endif()
endmacro()

metro_find_package(PkgConfig)
metro_find_package(Threads)
metro_find_package(OpenSSL 3)
metro_find_package(tomlplusplus 3)
metro_find_package(nlohmann_json 3)
metro_find_package(spdlog)
metro_find_package(SQLite3)
metro_find_package(PostgreSQL)  # libpq, for the shared ledger
metro_find_package(CLI11)  # metro::app is the command line as a library
# The admin API's /metrics: prometheus-cpp's metric families and text serializer (its core
# library only; Debian ships it shared, and its package config also looks for civetweb, zlib
# and curl, which prometheus-cpp-dev brings).
metro_find_package(prometheus-cpp)
metro_pkg_module(RE2 re2)
metro_pkg_module(HTTPLIB cpp-httplib)
metro_pkg_module(HIREDIS hiredis)  # the Celery handlers' Redis
# sd_notify for systemd's Type=notify (libsystemd0 is on every Debian system: apt needs it).
metro_pkg_module(SYSTEMD libsystemd)
# Boost's Beast and Asio, header-only, for the admin HTTP server: needed to build metro, not by
# a program that links an installed metro (the admin library names them only in its build
# interface), so not looked for then.
if(NOT METRO_FIND_AS_DEPENDENCY)
  find_package(Boost 1.74 REQUIRED)
endif()

# Qpid Proton ships no CMake package config and its C++ pkg-config file needs .pc files Debian
# does not ship; find the headers and libraries directly and wrap them in one imported target,
# metro::proton, which the installed metro targets name too.
if(NOT TARGET metro::proton)
  find_path(METRO_PROTON_INCLUDE_DIR proton/container.hpp)
  find_library(METRO_PROTON_CPP_LIBRARY qpid-proton-cpp)
  find_library(METRO_PROTON_LIBRARY qpid-proton)
  if(NOT METRO_PROTON_INCLUDE_DIR OR NOT METRO_PROTON_CPP_LIBRARY OR NOT METRO_PROTON_LIBRARY)
    set(_metro_missing "Qpid Proton C++ not found (Debian: libqpid-proton-cpp12-dev, libqpid-proton11-dev)")
    if(METRO_FIND_AS_DEPENDENCY)
      set(metro_NOT_FOUND_MESSAGE "${_metro_missing}")
      set(metro_FOUND FALSE)
      return()
    endif()
    message(FATAL_ERROR "${_metro_missing}")
  endif()
  add_library(metro::proton INTERFACE IMPORTED)
  set_target_properties(metro::proton PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${METRO_PROTON_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${METRO_PROTON_CPP_LIBRARY};${METRO_PROTON_LIBRARY}")
endif()
