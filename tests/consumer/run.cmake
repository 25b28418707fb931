# cmake -DSOURCE=<repo> -DWORK=<dir> -P run.cmake
# Builds tests/consumer as an outside project that pulls the source tree in
# with add_subdirectory, then runs it. The installed package (static and
# shared, CMake and pkg-config) is tested from the Debian package: deb.sh.
file(REMOVE_RECURSE ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${WORK}/consumer -G Ninja
                        -DPM_SOURCE_DIR=${SOURCE}
                COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/consumer COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK}/consumer/consumer RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer exited with ${rc}")
endif()
message(STATUS "consumer (subdirectory) built and ran")
