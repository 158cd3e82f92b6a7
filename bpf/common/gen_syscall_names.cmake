# cmake -DIN=asm/unistd_64.h -DOUT=syscall_names.h -P gen_syscall_names.cmake
# Emits a static x86_64 syscall name table from the kernel UAPI header.
file(STRINGS ${IN} lines REGEX "^#define __NR_[a-z0-9_]+[ \t]+[0-9]+")
set(body "")
foreach(l ${lines})
  string(REGEX MATCH "^#define __NR_([a-z0-9_]+)[ \t]+([0-9]+)" _ "${l}")
  string(APPEND body "\t[${CMAKE_MATCH_2}] = \"${CMAKE_MATCH_1}\",\n")
endforeach()
file(WRITE ${OUT}.tmp "/* generated from ${IN} by gen_syscall_names.cmake; do not edit */\n#ifndef KS_SYSCALL_NAMES_H\n#define KS_SYSCALL_NAMES_H\nstatic const char *const ks_syscall_names[] = {\n${body}};\n#define KS_SYSCALL_NAMES_N (sizeof(ks_syscall_names) / sizeof(ks_syscall_names[0]))\n#endif\n")
file(RENAME ${OUT}.tmp ${OUT})
