# PCRE2 (the tokenizer's pre-tokenizer regexes: \p{L}, lookahead) and ICU (its NFC
# normalizer), as the imported targets PkgConfig::PCRE2 and PkgConfig::ICU. Through pkg-config
# where it finds them (Debian); else by searching CMAKE_PREFIX_PATH and the system for headers
# and libraries, as on a GPU machine whose image has no pkg-config and gets the libraries from
# Debian packages unpacked next to the tree (scripts/gpu_full_build.sh).
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
  pkg_check_modules(ICU QUIET IMPORTED_TARGET icu-uc icu-i18n)
endif()

if(NOT TARGET PkgConfig::PCRE2)
  find_path(KVBENCH_PCRE2_INCLUDE pcre2.h)
  find_library(KVBENCH_PCRE2_LIBRARY NAMES pcre2-8)
  if(NOT KVBENCH_PCRE2_INCLUDE OR NOT KVBENCH_PCRE2_LIBRARY)
    message(FATAL_ERROR "PCRE2 (libpcre2-8) not found: install libpcre2-dev or add its prefix "
                        "to CMAKE_PREFIX_PATH")
  endif()
  add_library(PkgConfig::PCRE2 UNKNOWN IMPORTED)
  set_target_properties(PkgConfig::PCRE2 PROPERTIES
    IMPORTED_LOCATION "${KVBENCH_PCRE2_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${KVBENCH_PCRE2_INCLUDE}")
endif()

if(NOT TARGET PkgConfig::ICU)
  find_package(ICU COMPONENTS uc i18n)
  if(NOT ICU_FOUND)
    message(FATAL_ERROR "ICU (uc, i18n) not found: install libicu-dev or add its prefix to "
                        "CMAKE_PREFIX_PATH")
  endif()
  add_library(PkgConfig::ICU INTERFACE IMPORTED)
  target_link_libraries(PkgConfig::ICU INTERFACE ICU::uc ICU::i18n)
endif()
message(STATUS "kvbench: PCRE2 and ICU found")
