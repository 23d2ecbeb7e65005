// Known false positives for ThreadSanitizer in the test binaries, read by TSan at start-up (the
// function is only called when the binary is built with -fsanitize=thread).
//
// libstdc++'s std::exception_ptr counts its references with atomics inside libsupc++, which is
// not built with TSan: an exception handed from the client's thread to a caller through a
// std::future, read by the caller, and freed when the client's thread drops the last reference,
// looks like a race although the count orders it. Only that release is suppressed.

extern "C" const char* __tsan_default_suppressions() {
  return "race:std::__exception_ptr::exception_ptr::_M_release\n";
}
