# cmake -DSOURCE=<repo> -DWORK=<dir> -DMODE=install|subdirectory -P run.cmake
# Builds tests/consumer as an outside project would, then runs it.
file(REMOVE_RECURSE ${WORK})
if(MODE STREQUAL "install")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/lib -G Ninja -DCMAKE_BUILD_TYPE=Release
                    -DPM_BUILD_TESTS=OFF -DPM_BUILD_EXAMPLES=OFF -DPM_BUILD_BENCH=OFF -DPM_INSTALL=ON
                  COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/lib COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${WORK}/lib --prefix ${WORK}/prefix COMMAND_ERROR_IS_FATAL ANY)
  set(extra -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  set(extra -DPM_SOURCE_DIR=${SOURCE})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${WORK}/consumer -G Ninja ${extra}
                COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/consumer COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK}/consumer/consumer RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer exited with ${rc}")
endif()
message(STATUS "consumer (${MODE}) built and ran")
