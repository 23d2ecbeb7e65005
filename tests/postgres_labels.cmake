# Included by CTestTestfile.cmake after the discovered tests: the label `postgres` on those that
# start a PostgreSQL server. (gtest_discover_tests cannot take a list as a property's value: it
# splits `LABELS "e2e;postgres"` into separate words.)
foreach(test IN LISTS metro_instances_e2e_tests_TESTS)
  set_tests_properties("${test}" PROPERTIES LABELS "e2e;postgres")
endforeach()
foreach(test IN LISTS metro_integration_tests_TESTS)
  if(test MATCHES "^integration\\.InstancesTest\\.")
    set_tests_properties("${test}" PROPERTIES LABELS "integration;postgres")
  endif()
endforeach()
