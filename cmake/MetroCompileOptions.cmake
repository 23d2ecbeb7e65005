# Warnings and sanitizers in one place; every metro target links metro_compile_options.
add_library(metro_compile_options INTERFACE)
target_compile_options(metro_compile_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Wnon-virtual-dtor
  -Wold-style-cast -Woverloaded-virtual -Wimplicit-fallthrough)
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  # Checks the GUARDED_BY/REQUIRES/... annotations of src/common/thread_annotations.hpp.
  target_compile_options(metro_compile_options INTERFACE -Wthread-safety)
endif()
if(METRO_WERROR)
  target_compile_options(metro_compile_options INTERFACE -Werror)
endif()
if(METRO_SANITIZE)
  target_compile_options(metro_compile_options INTERFACE -fsanitize=${METRO_SANITIZE} -fno-omit-frame-pointer)
  target_link_options(metro_compile_options INTERFACE -fsanitize=${METRO_SANITIZE})
endif()
