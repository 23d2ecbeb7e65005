#pragma once

// `make_function_handler` (declared in the public service header) is implemented here: a C++
// function run on the worker's thread, its exceptions turned into outcomes.

#include <metro/dispatch/service.hpp>
