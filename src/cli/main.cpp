// `metro`: the command line, with no C++ handlers of its own (exec and http handlers only).

#include <metro/app.hpp>

int main(int argc, char** argv) { return metro::App().main(argc, argv); }
