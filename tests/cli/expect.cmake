# Shared by the CLI test scripts (cli_smoke.cmake, train_e2e.cmake): run the real binary and check
# its exit code and messages.

# expect_ok(<command...>): exit code 0; LAST_OUT holds stdout + stderr.
function(expect_ok)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "expected success: ${ARGN}\nrc=${rc}\n${out}\n${err}")
  endif()
  set(LAST_OUT "${out}${err}" PARENT_SCOPE)
endfunction()

# expect_fail(<needle> <command...>): exit code 1 (a dsv::Error, not a crash) and the needle in stderr.
function(expect_fail needle)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 1)
    message(FATAL_ERROR "expected exit code 1: ${ARGN}\nrc=${rc}\n${out}\n${err}")
  endif()
  string(FIND "${err}" "${needle}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "expected \"${needle}\" in the error of: ${ARGN}\n${err}")
  endif()
endfunction()
