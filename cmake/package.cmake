# `cpack -G DEB`: the libprocessmanager-dev package (headers, the CMake
# package, pkg-config, the examples; the static and the shared library when
# both builds are packaged together, as scripts/package-deb.sh does).
set(CPACK_PACKAGE_NAME libprocessmanager-dev)
set(CPACK_PACKAGE_VENDOR "processmanager")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_CONTACT "processmanager maintainers <processmanager@localhost>")
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# What the headers include and what the library links, as Debian names them.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libboost1.81-dev, libboost-json1.81-dev")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "C++20 supervision of a program's long-lived services
 processmanager starts a program's services (Boost.Asio coroutines or plain
 threads), passes them shutdown and reload requests, restarts the flaky
 ones and, when one fails, stops the others and reports what failed.
 This package holds the headers, the static and shared libraries, the
 CMake package, the pkg-config file and the examples.")
set(CPACK_STRIP_FILES OFF)
include(CPack)
