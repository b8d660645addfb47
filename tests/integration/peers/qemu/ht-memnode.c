/*
 * ht-memnode: QEMU TCG plugin counting guest memory accesses by the address QEMU's
 * plugin API reports for them (not part of the product; for the peer comparison).
 * Interface and the mapping to guest NUMA nodes: tests/integration/peers/README.md.
 *
 * Every load and store of every vCPU is counted in a histogram of
 * qemu_plugin_hwaddr_phys_addr() in buckets of bucket_kib (default 1024); a thread
 * appends the cumulative histogram as one JSON line to out= every interval_ms
 * (default 1000), and once more at exit.
 *
 * Debian ships no qemu-plugin.h (no binary package of bookworm or trixie has it;
 * only the qemu source package does), so the declarations below are the subset of
 * the QEMU plugin ABI, version 1 (QEMU 5.1 to 8.0; Debian 12 has 7.2), that this
 * plugin calls. The QEMU binary exports these symbols (nm -D).
 *
 * Build: gcc -O2 -shared -fPIC -o ht-memnode.so ht-memnode.c -lpthread
 * Run:   qemu-system-x86_64 -accel tcg -plugin ./ht-memnode.so,out=/tmp/m.jsonl ...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- QEMU plugin ABI, version 1 (the part used here) ---- */
#define HT_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
typedef struct {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
struct qemu_plugin_hwaddr;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS,
                            QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id,
                                               struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index,
                                          qemu_plugin_meminfo_t info, uint64_t vaddr,
                                          void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                           qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
                                                 size_t idx);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn,
                                      qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
struct qemu_plugin_hwaddr *qemu_plugin_get_hwaddr(qemu_plugin_meminfo_t info,
                                                  uint64_t vaddr);
bool qemu_plugin_hwaddr_is_io(const struct qemu_plugin_hwaddr *haddr);
uint64_t qemu_plugin_hwaddr_phys_addr(const struct qemu_plugin_hwaddr *haddr);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
void qemu_plugin_outs(const char *string);
HT_EXPORT extern int qemu_plugin_version;
HT_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                  int argc, char **argv);
/* ---- end of the ABI part ---- */

HT_EXPORT int qemu_plugin_version = 1;

#define MAX_BUCKETS (1u << 20)

static uint64_t bucket_shift;
static uint64_t nbuckets;
static int nvcpus;
static uint64_t *counts; /* [vcpu][bucket], each vCPU writes only its own row */
static uint64_t *io_counts, *overflow_counts; /* [vcpu] */
static FILE *out;
static double interval_s = 1.0;
static double t0;
static pthread_t dumper;
static pthread_mutex_t dump_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int stopping;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr,
                   void *udata)
{
    struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
    (void)udata;
    if (vcpu >= (unsigned)nvcpus)
        vcpu = (unsigned)nvcpus - 1; /* hot-added vCPUs share the last row */
    if (!hw || qemu_plugin_hwaddr_is_io(hw)) {
        __atomic_fetch_add(&io_counts[vcpu], 1, __ATOMIC_RELAXED);
        return;
    }
    uint64_t b = qemu_plugin_hwaddr_phys_addr(hw) >> bucket_shift;
    if (b >= nbuckets) {
        __atomic_fetch_add(&overflow_counts[vcpu], 1, __ATOMIC_RELAXED);
        return;
    }
    __atomic_fetch_add(&counts[(uint64_t)vcpu * nbuckets + b], 1, __ATOMIC_RELAXED);
}

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (size_t i = 0; i < n; i++)
        qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_mem,
                                         QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW,
                                         NULL);
}

static void dump(const char *type)
{
    uint64_t io = 0, overflow = 0, total = 0;
    struct timespec rt;
    pthread_mutex_lock(&dump_lock);
    clock_gettime(CLOCK_REALTIME, &rt);
    for (int v = 0; v < nvcpus; v++) {
        io += __atomic_load_n(&io_counts[v], __ATOMIC_RELAXED);
        overflow += __atomic_load_n(&overflow_counts[v], __ATOMIC_RELAXED);
    }
    fprintf(out, "{\"type\":\"%s\",\"t_s\":%.3f,\"unix_s\":%.3f,\"bucket_bytes\":%llu,"
                 "\"io\":%llu,\"overflow\":%llu,\"buckets\":{",
            type, mono_s() - t0, (double)rt.tv_sec + (double)rt.tv_nsec / 1e9,
            (unsigned long long)(1ULL << bucket_shift), (unsigned long long)io,
            (unsigned long long)overflow);
    int first = 1;
    for (uint64_t b = 0; b < nbuckets; b++) {
        uint64_t sum = 0;
        for (int v = 0; v < nvcpus; v++)
            sum += __atomic_load_n(&counts[(uint64_t)v * nbuckets + b], __ATOMIC_RELAXED);
        if (!sum)
            continue;
        total += sum;
        fprintf(out, "%s\"%llu\":%llu", first ? "" : ",", (unsigned long long)b,
                (unsigned long long)sum);
        first = 0;
    }
    fprintf(out, "},\"ram\":%llu}\n", (unsigned long long)total);
    fflush(out);
    pthread_mutex_unlock(&dump_lock);
}

static void *dumper_main(void *arg)
{
    (void)arg;
    double next = mono_s() + interval_s;
    while (!stopping) {
        double wait = next - mono_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        dump("sample");
        next += interval_s;
    }
    return NULL;
}

static void on_exit_cb(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    stopping = 1;
    pthread_join(dumper, NULL);
    dump("end");
    fclose(out);
}

static int fail(const char *msg, const char *arg)
{
    char line[512];
    snprintf(line, sizeof line, "ht-memnode: %s%s%s\n", msg, arg ? ": " : "",
             arg ? arg : "");
    qemu_plugin_outs(line);
    fputs(line, stderr);
    return -1;
}

HT_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                  int argc, char **argv)
{
    const char *path = NULL;
    unsigned long bucket_kib = 1024, max_gib = 64;
    if (!info->system_emulation)
        return fail("needs system emulation (qemu-system-*)", NULL);
    for (int i = 0; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return fail("argument without '='", argv[i]);
        size_t klen = (size_t)(eq - argv[i]);
        const char *v = eq + 1;
        char *end;
        if (klen == 3 && strncmp(argv[i], "out", 3) == 0) {
            path = v;
        } else if (klen == 11 && strncmp(argv[i], "interval_ms", 11) == 0) {
            long ms = strtol(v, &end, 10);
            if (*end || ms <= 0)
                return fail("interval_ms must be a positive integer", v);
            interval_s = (double)ms / 1000.0;
        } else if (klen == 10 && strncmp(argv[i], "bucket_kib", 10) == 0) {
            bucket_kib = strtoul(v, &end, 10);
            if (*end || bucket_kib < 4 || (bucket_kib & (bucket_kib - 1)))
                return fail("bucket_kib must be a power of two >= 4", v);
        } else if (klen == 7 && strncmp(argv[i], "max_gib", 7) == 0) {
            max_gib = strtoul(v, &end, 10);
            if (*end || max_gib == 0)
                return fail("max_gib must be a positive integer", v);
        } else {
            return fail("unknown argument (want out=, interval_ms=, bucket_kib=, "
                        "max_gib=)", argv[i]);
        }
    }
    if (!path)
        return fail("missing out=PATH", NULL);
    bucket_shift = 10 + (uint64_t)__builtin_ctzl(bucket_kib);
    nbuckets = ((uint64_t)max_gib << 30) >> bucket_shift;
    if (nbuckets > MAX_BUCKETS)
        return fail("max_gib / bucket_kib gives more than 2^20 buckets", NULL);
    nvcpus = info->system.max_vcpus > 0 ? info->system.max_vcpus : 1;
    counts = calloc((size_t)nvcpus * nbuckets, sizeof *counts);
    io_counts = calloc((size_t)nvcpus, sizeof *io_counts);
    overflow_counts = calloc((size_t)nvcpus, sizeof *overflow_counts);
    if (!counts || !io_counts || !overflow_counts)
        return fail("out of memory", NULL);
    out = fopen(path, "a");
    if (!out)
        return fail(strerror(errno), path);
    t0 = mono_s();
    fprintf(out, "{\"type\":\"start\",\"target\":\"%s\",\"api_min\":%d,\"api_cur\":%d,"
                 "\"vcpus\":%d,\"bucket_bytes\":%llu,\"max_bytes\":%llu}\n",
            info->target_name, info->version.min, info->version.cur, nvcpus,
            (unsigned long long)(1ULL << bucket_shift),
            (unsigned long long)(max_gib << 30));
    fflush(out);
    if (pthread_create(&dumper, NULL, dumper_main, NULL) != 0)
        return fail("pthread_create failed", NULL);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    return 0;
}
