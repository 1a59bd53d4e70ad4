// flock: whether AMX tile instructions execute on this machine.
//
// Some VMs advertise AMX in cpuid yet trap on the first tile instruction. With one CPU backend
// per feature level (GGML_CPU_ALL_VARIANTS, as flock's Docker image builds), ggml scores each
// variant from cpuid alone, so such a machine loads the AMX variant and dies (SIGILL) on its
// first Q8_0 matrix product. The variant's score calls this once: the tile instructions run in a
// forked child, and a child that does not exit cleanly rules the variant out. (A native build
// probes the same way at build time: engine/native/cpu-probe.ts.) The feature-detection unit is
// compiled without the variant's -m flags, so only the tile code carries a target attribute.
#pragma once

#if defined(__linux__) && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((target("amx-tile"))) static inline void flock_amx_tile_zero() {
    alignas(64) unsigned char config[64] = {};
    config[0]  = 1;  // palette 1
    config[16] = 64; // tile 0: 64 bytes per row
    config[48] = 16; //         16 rows
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
}

static inline bool flock_amx_executes() {
    // Test hooks: the child traps as such a VM's would ("trap"), or exits at once ("pass").
    const char * hook = std::getenv("FLOCK_TEST_AMX_PROBE");
    const bool trap = hook != nullptr && std::strcmp(hook, "trap") == 0;
    const bool pass = hook != nullptr && std::strcmp(hook, "pass") == 0;

    const pid_t pid = fork();
    if (pid < 0) {
        return false;
    }
    if (pid == 0) {
        // Only async-signal-safe calls in the child of a possibly multi-threaded process.
        signal(SIGILL, SIG_DFL);
        if (trap) {
            __builtin_trap();
        }
        if (pass) {
            _exit(0);
        }
        // The kernel's permission for the tile data state, as ggml_amx_init asks for it.
        if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
            _exit(2);
        }
        flock_amx_tile_zero();
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            return false;
        }
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
#else
// Elsewhere cpuid decides, as upstream.
static inline bool flock_amx_executes() { return true; }
#endif
