/* Keeps secrets off a process's command line (LD_PRELOAD; built by `make setup`, used by serving/runtime/launch.py).
 *
 * tritonserver takes its admin key only as an argument (`--http-restricted-api=...:admin-key=<secret>`) and every
 * local user can read /proc/PID/cmdline. The launcher puts a placeholder `@NAME@` in the argument instead, the secret
 * in the environment variable NAME (/proc/PID/environ is readable by the owner only), and NAME in ARGV_SECRETS
 * (comma-separated). Before main() runs, this constructor points argv[i] at a heap copy with the placeholder replaced:
 * the program parses the secret, /proc/PID/cmdline (the original strings on the stack) still shows the placeholder.
 * It then wipes the secret from the environment block and unsets ARGV_SECRETS, the names and LD_PRELOAD, so children
 * (Triton's Python backend stubs) inherit none of it.
 *
 * Only in the program meant (the file name of /proc/self/exe equal to ARGV_SECRET_EXE, default "tritonserver"):
 * LD_PRELOAD also loads it into any wrapper that starts Triton, such as the NVIDIA image's entrypoint script, and a
 * wrapper swapped like that would exec Triton with the secret in its arguments. Anywhere else it changes nothing, so
 * the environment, the library included, reaches the program the wrapper execs.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* `arg` with every `placeholder` replaced by `value`, newly allocated; NULL when `arg` holds no placeholder. */
static char *substitute(const char *arg, const char *placeholder, const char *value) {
    size_t plen = strlen(placeholder), vlen = strlen(value), count = 0;
    for (const char *p = strstr(arg, placeholder); p; p = strstr(p + plen, placeholder)) count++;
    if (count == 0) return NULL;
    char *out = malloc(strlen(arg) + count * vlen + 1), *w = out;
    if (out == NULL) abort(); /* never run with the placeholder as the secret */
    for (const char *p; (p = strstr(arg, placeholder)); arg = p + plen) {
        memcpy(w, arg, (size_t)(p - arg));
        w += p - arg;
        memcpy(w, value, vlen);
        w += vlen;
    }
    strcpy(w, arg);
    return out;
}

/* Whether this process runs the program named by ARGV_SECRET_EXE (default tritonserver). */
static int is_target(void) {
    const char *want = getenv("ARGV_SECRET_EXE");
    if (want == NULL || *want == '\0') want = "tritonserver";
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) return 0;
    exe[n] = '\0';
    const char *base = strrchr(exe, '/');
    return strcmp(base ? base + 1 : exe, want) == 0;
}

__attribute__((constructor)) static void argv_secret(int argc, char **argv, char **envp) {
    (void)envp;
    const char *names = getenv("ARGV_SECRETS");
    if (names == NULL || !is_target()) return;
    char *list = strdup(names);
    if (list == NULL) abort();
    char *save = NULL;
    for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        char *value = getenv(name);
        if (value == NULL) {
            /* Named but not set: the program would run with the (public) placeholder as its secret, and the
             * fail-closed check argument, swapped like the others, would not stop it. */
            fprintf(stderr, "argv_secret: %s is listed in ARGV_SECRETS but not set; refusing to start\n", name);
            abort();
        }
        char placeholder[256];
        if (snprintf(placeholder, sizeof placeholder, "@%s@", name) >= (int)sizeof placeholder) continue;
        for (int i = 1; i < argc; i++) {
            char *swapped = substitute(argv[i], placeholder, value);
            if (swapped != NULL) argv[i] = swapped;
        }
        /* getenv points into the initial environment block, which /proc/PID/environ shows: wipe it in place. */
        memset(value, 0, strlen(value));
        unsetenv(name);
    }
    free(list);
    unsetenv("ARGV_SECRETS");
    unsetenv("ARGV_SECRET_EXE");
    unsetenv("LD_PRELOAD");
}
