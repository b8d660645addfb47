/*
 * ht-workload: synthetic tiering workloads with a known hot set, run inside the
 * test guest (not part of the product). Interface: tests/integration/peers/README.md.
 *
 * One private anonymous mapping of --total-mib, 4 KiB pages (THP off unless --thp):
 *   pages [0, H)       hot set A (H = --hot-mib)
 *   pages [H, 2H)      region B, the hot set after --shift-at-s (pattern "shift" only)
 *   the rest           cold data
 * Initial placement is first touch, optionally steered per region by a temporary
 * mbind(2) MPOL_BIND that is reset to MPOL_DEFAULT right after the touch, so the
 * kernel's policy for every page is the default one while the workload runs and any
 * mechanism may migrate it. Placement is read every --interval-s with move_pages(2)
 * in query mode (nodes = NULL), in batches, and printed as one JSON line.
 *
 * Build: gcc -O2 -static -o ht-workload ht-workload.c, ht-common.h beside it
 * (glibc only; no libnuma).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HT_PROG "ht-workload"
#include "ht-common.h"

#define PAGE 4096UL
#define WORDS_PER_PAGE (PAGE / sizeof(uint64_t))
#define MIB (1UL << 20)
#define MPOL_DEFAULT 0
#define MPOL_BIND 2
#define QUERY_BATCH 4096UL
#define MAX_NODES 64

enum pattern { P_SLOW_HOT, P_SHIFT, P_SCAN, P_LARGE };
static const char *const PATTERN_NAMES[] = {"slow-hot", "shift", "scan", "large"};
/* Placement of a region at first touch: -1 default policy, else a node id. */
#define PLACE_DEFAULT (-1)

struct config {
    enum pattern pattern;
    unsigned long total_mib, hot_mib;
    double duration_s, interval_s, shift_at_s, scan_period_s, ops_per_s;
    unsigned long all_every;
    int hot_node, cold_node, b_node;
    int cold_first;
    int thp;
    uint64_t seed;
};

static uint64_t rng_state;

static inline uint64_t rng_next(void)
{
    /* xorshift64*: cheap enough that the page touches dominate under TCG. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static void die(const char *what)
{
    fprintf(stderr, "ht-workload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long sys_mbind(void *addr, unsigned long len, int mode, const unsigned long *mask,
                      unsigned long maxnode)
{
    return syscall(SYS_mbind, addr, len, mode, mask, maxnode, 0UL);
}

/* First-touch [first, first + count) pages, under a temporary bind to `node`
 * (PLACE_DEFAULT: no bind), then reset the range's policy to the default. */
static void place(char *base, unsigned long first, unsigned long count, int node)
{
    char *addr = base + first * PAGE;
    unsigned long len = count * PAGE;
    if (count == 0)
        return;
    if (node != PLACE_DEFAULT) {
        unsigned long mask = 1UL << node;
        if (sys_mbind(addr, len, MPOL_BIND, &mask, MAX_NODES) != 0) {
            fprintf(stderr, "ht-workload: mbind(MPOL_BIND) to node %d: %s%s\n", node,
                    strerror(errno), errno == EINVAL ? " (no such memory node?)" : "");
            exit(1);
        }
    }
    for (unsigned long i = 0; i < count; i++)
        ((volatile uint64_t *)(addr + i * PAGE))[0] = first + i + 1;
    if (node != PLACE_DEFAULT && sys_mbind(addr, len, MPOL_DEFAULT, NULL, 0) != 0)
        die("mbind(MPOL_DEFAULT)");
}

struct placement {
    unsigned long node0, other, absent;
};

/* Where the pages [first, first + count) are, by move_pages(2) query. */
static struct placement query(char *base, unsigned long first, unsigned long count,
                              void **addrs, int *status)
{
    struct placement p = {0, 0, 0};
    for (unsigned long done = 0; done < count; done += QUERY_BATCH) {
        unsigned long n = count - done < QUERY_BATCH ? count - done : QUERY_BATCH;
        for (unsigned long i = 0; i < n; i++)
            addrs[i] = base + (first + done + i) * PAGE;
        if (syscall(SYS_move_pages, 0, n, addrs, NULL, status, 0) != 0)
            die("move_pages(query)");
        for (unsigned long i = 0; i < n; i++) {
            if (status[i] == 0)
                p.node0++;
            else if (status[i] > 0)
                p.other++;
            else
                p.absent++;
        }
    }
    return p;
}

static double frac(unsigned long part, unsigned long whole)
{
    return whole ? (double)part / (double)whole : 0.0;
}

static long node0_free_kib(void)
{
    FILE *f = fopen("/sys/devices/system/node/node0/meminfo", "r");
    char line[256];
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "MemFree:");
        if (p) {
            kib = strtol(p + 8, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static const char HELP[] =
    "usage: ht-workload PATTERN [options]\n"
    "Synthetic workload with a known hot set; prints one JSON line per interval.\n"
    "PATTERN: slow-hot | shift | scan | large\n"
    "  --total-mib N      whole mapping, MiB (default 512)\n"
    "  --hot-mib N        hot set, MiB (default 64)\n"
    "  --duration-s S     run time after placement (default 60; 0: until SIGTERM)\n"
    "  --interval-s S     report interval (default 1)\n"
    "  --hot-node N|default   first-touch node of the hot set A\n"
    "  --cold-node N|default  first-touch node of the cold data\n"
    "  --b-node N|default     first-touch node of region B (shift)\n"
    "  --order cold-first|hot-first   which is touched first\n"
    "  --shift-at-s S     shift: hot set moves from A to B at S (default 30)\n"
    "  --scan-period-s S  scan: full read of the cold data every S (default 10)\n"
    "  --ops-per-s N      cap on page touches per second (default 0: no cap)\n"
    "  --all-every N      query the whole mapping every N reports (default 1)\n"
    "  --thp              leave transparent huge pages on (default: MADV_NOHUGEPAGE)\n"
    "  --seed N           random seed (default 1)\n"
    "Example: ht-workload slow-hot --total-mib 512 --hot-mib 64 --duration-s 60\n";

static int parse_node(const char *s)
{
    char *end;
    long v;
    if (strcmp(s, "default") == 0)
        return PLACE_DEFAULT;
    v = strtol(s, &end, 10);
    if (*end || v < 0 || v >= MAX_NODES)
        usage_error("node must be 0..63 or 'default'");
    return (int)v;
}

static void parse_args(int argc, char **argv, struct config *c)
{
    enum { O_TOTAL = 256, O_HOT, O_DUR, O_INT, O_HN, O_CN, O_BN, O_ORDER, O_SHIFT,
           O_SCAN, O_OPS, O_THP, O_SEED, O_HELP, O_ALL };
    static const struct option opts[] = {
        {"total-mib", 1, 0, O_TOTAL},   {"hot-mib", 1, 0, O_HOT},
        {"duration-s", 1, 0, O_DUR},    {"interval-s", 1, 0, O_INT},
        {"hot-node", 1, 0, O_HN},       {"cold-node", 1, 0, O_CN},
        {"b-node", 1, 0, O_BN},         {"order", 1, 0, O_ORDER},
        {"shift-at-s", 1, 0, O_SHIFT},  {"scan-period-s", 1, 0, O_SCAN},
        {"ops-per-s", 1, 0, O_OPS},     {"thp", 0, 0, O_THP},
        {"seed", 1, 0, O_SEED},         {"help", 0, 0, O_HELP},
        {"all-every", 1, 0, O_ALL},
        {0, 0, 0, 0}};
    int set_hot = 0, set_cold = 0, set_order = 0, o;
    int p;

    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(HELP, stdout);
        exit(0);
    }
    if (argc < 2)
        usage_error("missing PATTERN");
    for (p = 0; p < 4; p++)
        if (strcmp(argv[1], PATTERN_NAMES[p]) == 0)
            break;
    if (p == 4)
        usage_error("PATTERN must be slow-hot, shift, scan or large");
    c->pattern = (enum pattern)p;
    c->total_mib = 512;
    c->hot_mib = 64;
    c->duration_s = 60;
    c->interval_s = 1;
    c->shift_at_s = 30;
    c->scan_period_s = 10;
    c->ops_per_s = 0;
    c->b_node = 1;
    c->thp = 0;
    c->seed = 1;
    c->all_every = 1;
    optind = 2;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_TOTAL: c->total_mib = (unsigned long)parse_num(optarg, "--total-mib"); break;
        case O_HOT: c->hot_mib = (unsigned long)parse_num(optarg, "--hot-mib"); break;
        case O_DUR: c->duration_s = parse_num(optarg, "--duration-s"); break;
        case O_INT: c->interval_s = parse_num(optarg, "--interval-s"); break;
        case O_HN: c->hot_node = parse_node(optarg); set_hot = 1; break;
        case O_CN: c->cold_node = parse_node(optarg); set_cold = 1; break;
        case O_BN: c->b_node = parse_node(optarg); break;
        case O_ORDER:
            if (strcmp(optarg, "cold-first") == 0)
                c->cold_first = 1;
            else if (strcmp(optarg, "hot-first") == 0)
                c->cold_first = 0;
            else
                usage_error("--order must be cold-first or hot-first");
            set_order = 1;
            break;
        case O_SHIFT: c->shift_at_s = parse_num(optarg, "--shift-at-s"); break;
        case O_SCAN: c->scan_period_s = parse_num(optarg, "--scan-period-s"); break;
        case O_OPS: c->ops_per_s = parse_num(optarg, "--ops-per-s"); break;
        case O_THP: c->thp = 1; break;
        case O_SEED: c->seed = (uint64_t)parse_num(optarg, "--seed"); break;
        case O_ALL: c->all_every = (unsigned long)parse_num(optarg, "--all-every"); break;
        case O_HELP: fputs(HELP, stdout); exit(0);
        default: usage_error("unknown option");
        }
    }
    if (optind != argc)
        usage_error("unexpected argument");
    /* Per-pattern defaults (README, "Patterns"). */
    if (!set_hot)
        c->hot_node = (c->pattern == P_SLOW_HOT || c->pattern == P_SCAN) ? 1
                      : PLACE_DEFAULT;
    if (!set_cold)
        c->cold_node = PLACE_DEFAULT;
    if (!set_order)
        c->cold_first = c->pattern != P_SHIFT && c->pattern != P_LARGE;
    if (c->interval_s <= 0)
        usage_error("--interval-s must be > 0");
    if (c->hot_mib == 0)
        usage_error("--hot-mib must be > 0");
    if (c->all_every == 0)
        usage_error("--all-every must be > 0");
    if (c->hot_mib * (c->pattern == P_SHIFT ? 2 : 1) > c->total_mib)
        usage_error("--total-mib must hold the hot set (twice for shift)");
    if (c->seed == 0)
        c->seed = 1;
}

int main(int argc, char **argv)
{
    struct config c;
    memset(&c, 0, sizeof c);
    parse_args(argc, argv, &c);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rng_state = c.seed;

    unsigned long total = c.total_mib * MIB / PAGE;
    unsigned long hot = c.hot_mib * MIB / PAGE;
    unsigned long b_first = hot, b_count = c.pattern == P_SHIFT ? hot : 0;
    unsigned long cold_first_page = hot + b_count, cold = total - cold_first_page;
    char *base = mmap(NULL, total * PAGE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void **addrs = calloc(QUERY_BATCH, sizeof *addrs);
    int *status = calloc(QUERY_BATCH, sizeof *status);
    if (base == MAP_FAILED)
        die("mmap");
    if (!addrs || !status)
        die("calloc");
    if (!c.thp && madvise(base, total * PAGE, MADV_NOHUGEPAGE) != 0)
        die("madvise(MADV_NOHUGEPAGE)");

    double t_place = now_s();
    if (c.cold_first) {
        place(base, cold_first_page, cold, c.cold_node);
        place(base, b_first, b_count, c.b_node);
        place(base, 0, hot, c.hot_node);
    } else {
        place(base, 0, hot, c.hot_node);
        place(base, b_first, b_count, c.b_node);
        place(base, cold_first_page, cold, c.cold_node);
    }
    double t0 = now_s();
    printf("{\"type\":\"start\",\"pattern\":\"%s\",\"pid\":%d,\"unix_s\":%.3f,"
           "\"page_size\":%lu,\"total_pages\":%lu,\"hot_pages\":%lu,\"b_pages\":%lu,"
           "\"cold_pages\":%lu,\"hot_node\":%d,\"cold_node\":%d,\"b_node\":%d,"
           "\"order\":\"%s\",\"thp\":%s,\"place_s\":%.3f,\"addr\":%lu}\n",
           PATTERN_NAMES[c.pattern], (int)getpid(), unix_s(), PAGE, total, hot, b_count,
           cold, c.hot_node, c.cold_node, c.b_node,
           c.cold_first ? "cold-first" : "hot-first", c.thp ? "true" : "false",
           t0 - t_place, (unsigned long)base);

    unsigned long hot_first = 0; /* current hot set: [hot_first, hot_first + hot) */
    int shifted = 0;
    unsigned long scans = 0, scan_pages_total = 0;
    double next_report = t0 + c.interval_s, next_scan = t0 + c.scan_period_s;
    double last_report = t0;
    unsigned long ops_since = 0, ops_total = 0, scan_since = 0;
    uint64_t sink = 0;
    double query_s_total = 0;
    unsigned long reports = 0;
    struct placement pa = {0, 0, 0};
    volatile uint64_t *words = (volatile uint64_t *)base;

    for (;;) {
        double t = now_s();
        int last = stop_flag || (c.duration_s > 0 && t - t0 >= c.duration_s);
        if (c.pattern == P_SHIFT && !shifted && t - t0 >= c.shift_at_s) {
            shifted = 1;
            hot_first = b_first;
        }
        if (c.pattern == P_SCAN && c.scan_period_s > 0 && t >= next_scan && !last) {
            /* One sequential read of every cold page, as a backup or an analytics
             * query over the whole data set would do. */
            for (unsigned long i = 0; i < cold; i++)
                sink += words[(cold_first_page + i) * WORDS_PER_PAGE];
            scans++;
            scan_since += cold;
            scan_pages_total += cold;
            next_scan += c.scan_period_s;
            t = now_s();
        }
        if (t >= next_report || last) {
            double q0 = now_s();
            struct placement ph = query(base, hot_first, hot, addrs, status);
            int all_now = reports % c.all_every == 0 || last;
            if (all_now)
                pa = query(base, 0, total, addrs, status);
            struct placement pp = {0, 0, 0};
            if (shifted)
                pp = query(base, 0, hot, addrs, status);
            double q1 = now_s();
            double span = q0 - last_report;
            query_s_total += q1 - q0;
            reports++;
            printf("{\"type\":\"%s\",\"t_s\":%.3f,\"unix_s\":%.3f,"
                   "\"hot_node0_frac\":%.6f,\"all_node0_frac\":%.6f,"
                   "\"hot_node0_pages\":%lu,\"hot_other_pages\":%lu,"
                   "\"hot_absent_pages\":%lu,\"all_node0_pages\":%lu,"
                   "\"all_other_pages\":%lu,\"all_absent_pages\":%lu,"
                   "\"ops_per_s\":%.1f,\"ops\":%lu,\"hot_region\":\"%s\"",
                   last ? "end" : "sample", q0 - t0, unix_s(), frac(ph.node0, hot),
                   frac(pa.node0, total), ph.node0, ph.other, ph.absent, pa.node0,
                   pa.other, pa.absent, span > 0 ? (double)ops_since / span : 0.0,
                   ops_total, shifted ? "B" : "A");
            if (c.pattern == P_SHIFT)
                printf(",\"old_hot_node0_frac\":%.6f", shifted ? frac(pp.node0, hot)
                                                                : -1.0);
            if (c.pattern == P_SCAN)
                printf(",\"scans\":%lu,\"scan_pages_per_s\":%.1f", scans,
                       span > 0 ? (double)scan_since / span : 0.0);
            printf(",\"all_measured\":%s,\"node0_free_kib\":%ld,\"query_s\":%.4f",
                   all_now ? "true" : "false", node0_free_kib(), q1 - q0);
            if (last)
                printf(",\"query_s_total\":%.3f,\"reports\":%lu,\"scan_pages\":%lu",
                       query_s_total, reports, scan_pages_total);
            printf("}\n");
            ops_since = 0;
            scan_since = 0;
            last_report = q1;
            while (next_report <= q1)
                next_report += c.interval_s;
            if (last)
                break;
        }
        /* A burst of random touches of the hot set: one 8-byte read-modify-write at a
         * random word of a random hot page per op. */
        for (int i = 0; i < 4096; i++) {
            uint64_t r = rng_next();
            unsigned long page = hot_first + (unsigned long)((r >> 20) % hot);
            words[page * WORDS_PER_PAGE + (r & (WORDS_PER_PAGE - 1))] += 1;
        }
        ops_since += 4096;
        ops_total += 4096;
        if (c.ops_per_s > 0) {
            double ahead = (double)ops_since / c.ops_per_s - (now_s() - last_report);
            if (ahead > 0) {
                struct timespec ts = {(time_t)ahead,
                                      (long)((ahead - (double)(time_t)ahead) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    if (sink == 42)
        fputs("", stderr); /* keep the scan's reads */
    return 0;
}
