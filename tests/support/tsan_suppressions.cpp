// Known false positives for ThreadSanitizer in the test binaries, read by TSan at start-up (the
// function is only called when the binary is built with -fsanitize=thread).
//
// libstdc++'s std::exception_ptr counts its references with atomics inside libsupc++, which is
// not built with TSan: an exception handed from the client's thread to a caller through a
// std::future, read by the caller, and freed when the client's thread drops the last reference,
// looks like a race although the count orders it. Only that release is suppressed.
//
// Debian's libcpp-httplib is not built with TSan either. Its client keeps function-local static
// std::regex objects whose guard the compiler checks inline, a load TSan cannot see in an
// uninstrumented library: the second thread to use one is reported as racing with the first
// thread's construction of it, although the guard orders them. Reports whose stacks pass
// through that library are suppressed; metro's own code around it is checked as usual.

extern "C" const char* __tsan_default_suppressions() {
  return "race:std::__exception_ptr::exception_ptr::_M_release\n"
         "race:libcpp-httplib.so\n";
}
