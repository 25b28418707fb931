# cmake -DSOURCE=<repo> -DWORK=<dir> -DMODE=install|subdirectory -P run.cmake
# Builds tests/consumer as an outside project would, then runs it: against
# the installed package both ways (CMake find_package, then pkg-config and
# the compiler alone), or with add_subdirectory.
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
if(MODE STREQUAL "install")
  # No CMake on the consumer's side: the compiler and pkg-config alone.
  find_program(PKG_CONFIG pkg-config REQUIRED)
  find_program(CXX NAMES c++ g++ REQUIRED)
  file(GLOB_RECURSE pc ${WORK}/prefix/*/processmanager.pc)
  if(NOT pc)
    message(FATAL_ERROR "no processmanager.pc was installed under ${WORK}/prefix")
  endif()
  get_filename_component(pcdir "${pc}" DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} ${pcdir})
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs processmanager OUTPUT_VARIABLE flags
                  OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  separate_arguments(flags UNIX_COMMAND "${flags}")
  execute_process(COMMAND ${CXX} -std=c++20 ${SOURCE}/tests/consumer/main.cpp ${flags} -o ${WORK}/consumer/consumer-pc
                  COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${WORK}/consumer/consumer-pc RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "the consumer exited with ${rc}")
  endif()
  message(STATUS "consumer (pkgconfig, flags: ${flags}) built and ran")
endif()
