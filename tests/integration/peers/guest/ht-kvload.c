/*
 * ht-kvload: load generator for redis-server with a Zipf-skewed key distribution,
 * run inside the test guest (not part of the product). Interface:
 * tests/integration/peers/README.md.
 *
 * Populates --keys keys of --value-bytes (pipelined SETs), then --connections
 * threads each send GET (share --get-ratio) or SET requests one at a time on their
 * own connection, keys drawn from a Zipf(--zipf) distribution over key ranks.
 * Every --interval-s one JSON line: throughput, misses, latency percentiles.
 *
 * Build: gcc -O2 -static -o ht-kvload ht-kvload.c, ht-common.h beside it (glibc
 * >= 2.34 only: no libm, no libpthread, no NSS; --host takes a numeric IPv4 or
 * IPv6 address).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HT_PROG "ht-kvload"
#include "ht-common.h"

#define SUB_BUCKETS 16
#define OCTAVES 40
#define NBUCKETS (OCTAVES * SUB_BUCKETS)
#define MAX_CONNECTIONS 64
#define POPULATE_BATCH 64

struct config {
    const char *host;
    const char *unix_path; /* non-NULL: a Unix socket instead of host:port */
    int port;
    unsigned long keys;
    unsigned long value_bytes;
    int connections;
    double duration_s, interval_s, zipf, get_ratio;
    int hot_keys; /* 0 last, 1 first, 2 scattered */
    int populate;
    uint64_t seed;
};

static const char *const HOT_KEYS[] = {"last", "first", "scattered"};

struct conn {
    int fd;
    char buf[1 << 16];
    size_t len, pos;
};

struct worker {
    pthread_t thread;
    int index;
    struct conn conn;
    uint64_t rng;
    /* counters read by the reporter: relaxed atomics */
    uint64_t ops, gets, sets, misses;
    uint64_t hist[NBUCKETS];
    int failed;
    char error[256];
};

static struct config cfg;
static double *zipf_cdf;
static unsigned long perm_mult;
static char *value;
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

/* Latency histogram: 16 sub-buckets per power of two of microseconds (<= 6 %). */
static int bucket_of(uint64_t us)
{
    int octave, sub;
    if (us < SUB_BUCKETS)
        return (int)us;
    octave = 63 - __builtin_clzll(us);          /* >= 4 */
    sub = (int)((us >> (octave - 4)) & 15);      /* 4 bits below the top one */
    int b = (octave - 3) * SUB_BUCKETS + sub;
    return b < NBUCKETS ? b : NBUCKETS - 1;
}

static double bucket_value(int b)
{
    int octave, sub;
    if (b < SUB_BUCKETS)
        return b;
    octave = b / SUB_BUCKETS + 3;
    sub = b % SUB_BUCKETS;
    /* midpoint of the bucket */
    return ((double)(16 + sub) + 0.5) * (double)(1ULL << (octave - 4));
}

static void die(const char *what)
{
    fprintf(stderr, "ht-kvload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int connect_unix(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un un;
    int fd;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof un.sun_path) {
        snprintf(err, errlen, "--unix %s: path too long", path);
        return -1;
    }
    strcpy(un.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof un) != 0) {
        snprintf(err, errlen, "connect %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int connect_to(const char *host, int port, char *err, size_t errlen)
{
    if (cfg.unix_path)
        return connect_unix(cfg.unix_path, err, errlen);
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr *sa;
    socklen_t salen;
    int fd, one = 1;
    memset(&in4, 0, sizeof in4);
    memset(&in6, 0, sizeof in6);
    if (inet_pton(AF_INET, host, &in4.sin_addr) == 1) {
        in4.sin_family = AF_INET;
        in4.sin_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&in4;
        salen = sizeof in4;
    } else if (inet_pton(AF_INET6, host, &in6.sin6_addr) == 1) {
        in6.sin6_family = AF_INET6;
        in6.sin6_port = htons((uint16_t)port);
        sa = (struct sockaddr *)&in6;
        salen = sizeof in6;
    } else {
        snprintf(err, errlen, "--host %s: not a numeric IPv4 or IPv6 address", host);
        return -1;
    }
    fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, sa, salen) != 0) {
        snprintf(err, errlen, "connect %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Make at least `need` unread bytes available in c->buf. */
static int fill(struct conn *c, size_t need)
{
    if (c->pos > 0 && c->len - c->pos < need) {
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
    }
    while (c->len - c->pos < need) {
        ssize_t r;
        if (c->len == sizeof c->buf)
            return -1;
        r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c->len += (size_t)r;
    }
    return 0;
}

/* Read one RESP line (without CRLF) into line; returns its length or -1. */
static long read_line(struct conn *c, char *line, size_t cap)
{
    for (;;) {
        char *nl = memchr(c->buf + c->pos, '\n', c->len - c->pos);
        if (nl) {
            size_t n = (size_t)(nl - (c->buf + c->pos));
            if (n > 0 && nl[-1] == '\r')
                n--;
            if (n >= cap)
                return -1;
            memcpy(line, c->buf + c->pos, n);
            line[n] = 0;
            c->pos = (size_t)(nl - c->buf) + 1;
            return (long)n;
        }
        if (fill(c, c->len - c->pos + 1) != 0)
            return -1;
    }
}

/* One reply: 0 ok (+OK or a bulk string), 1 nil bulk (miss), -1 error/protocol. */
static int read_reply(struct conn *c, char *err, size_t errlen)
{
    char line[256];
    long n = read_line(c, line, sizeof line);
    if (n < 0) {
        snprintf(err, errlen, "connection closed or reply too long");
        return -1;
    }
    if (line[0] == '+')
        return 0;
    if (line[0] == '$') {
        long len = strtol(line + 1, NULL, 10);
        if (len < 0)
            return 1;
        /* skip len bytes + CRLF, possibly more than the buffer holds */
        size_t left = (size_t)len + 2;
        while (left > 0) {
            size_t avail = c->len - c->pos;
            if (avail == 0) {
                if (fill(c, 1) != 0) {
                    snprintf(err, errlen, "connection closed in a bulk reply");
                    return -1;
                }
                avail = c->len - c->pos;
            }
            size_t take = avail < left ? avail : left;
            c->pos += take;
            left -= take;
        }
        return 0;
    }
    snprintf(err, errlen, "server replied: %.200s", line);
    return -1;
}

static unsigned long key_of_rank(unsigned long rank)
{
    switch (cfg.hot_keys) {
    case 0: return cfg.keys - 1 - rank;
    case 1: return rank;
    default: return (unsigned long)(((unsigned __int128)rank * perm_mult) % cfg.keys);
    }
}

static unsigned long zipf_rank(uint64_t *rng)
{
    double u = rng_unit(rng);
    unsigned long lo = 0, hi = cfg.keys - 1;
    while (lo < hi) {
        unsigned long mid = lo + (hi - lo) / 2;
        if (zipf_cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t format_set(char *out, size_t cap, unsigned long key)
{
    char k[32];
    int kl = snprintf(k, sizeof k, "key:%010lu", key);
    int n = snprintf(out, cap, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%lu\r\n", kl, k,
                     cfg.value_bytes);
    memcpy(out + n, value, cfg.value_bytes);
    memcpy(out + n + cfg.value_bytes, "\r\n", 2);
    return (size_t)n + cfg.value_bytes + 2;
}

static size_t format_get(char *out, size_t cap, unsigned long key)
{
    char k[32];
    int kl = snprintf(k, sizeof k, "key:%010lu", key);
    return (size_t)snprintf(out, cap, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", kl, k);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    size_t cap = cfg.value_bytes + 128;
    char *req = malloc(cap);
    if (!req) {
        snprintf(w->error, sizeof w->error, "out of memory");
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
        return NULL;
    }
    while (!stop_flag) {
        unsigned long key = key_of_rank(zipf_rank(&w->rng));
        int is_get = rng_unit(&w->rng) < cfg.get_ratio;
        size_t n = is_get ? format_get(req, cap, key) : format_set(req, cap, key);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (send_all(w->conn.fd, req, n) != 0) {
            snprintf(w->error, sizeof w->error, "send: %s", strerror(errno));
            break;
        }
        int rc = read_reply(&w->conn, w->error, sizeof w->error);
        if (rc < 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        uint64_t us = (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000L +
                                 (t1.tv_nsec - t0.tv_nsec) / 1000L);
        __atomic_fetch_add(&w->hist[bucket_of(us)], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(is_get ? &w->gets : &w->sets, 1, __ATOMIC_RELAXED);
        if (rc == 1)
            __atomic_fetch_add(&w->misses, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&w->ops, 1, __ATOMIC_RELAXED);
    }
    if (!stop_flag)
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELEASE);
    free(req);
    return NULL;
}

static void populate(int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    size_t one = cfg.value_bytes + 128;
    char *batch = malloc(one * POPULATE_BATCH);
    char err[256];
    if (!c || !batch)
        die("calloc");
    c->fd = fd;
    for (unsigned long first = 0; first < cfg.keys && !stop_flag; first += POPULATE_BATCH) {
        size_t len = 0;
        unsigned long n = cfg.keys - first < POPULATE_BATCH ? cfg.keys - first
                                                            : POPULATE_BATCH;
        for (unsigned long i = 0; i < n; i++)
            len += format_set(batch + len, one, first + i);
        if (send_all(fd, batch, len) != 0)
            die("send (populate)");
        for (unsigned long i = 0; i < n; i++)
            if (read_reply(c, err, sizeof err) != 0) {
                fprintf(stderr, "ht-kvload: populate: %s\n", err);
                exit(1);
            }
    }
    free(batch);
    free(c);
}

static unsigned long gcd(unsigned long a, unsigned long b)
{
    while (b) {
        unsigned long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* x^-s for x >= 1, s >= 0 without libm: exp(-s ln x) by series (rel. error < 1e-12;
 * plenty for popularity weights). */
static double inv_pow(double x, double s)
{
    union { double d; uint64_t u; } v = {x}, two;
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & ~(0x7ffULL << 52)) | (1023ULL << 52); /* mantissa m in [1, 2) */
    double z = (v.d - 1) / (v.d + 1), z2 = z * z, term = z, ln_m = 0;
    for (int k = 1; k < 40; k += 2) {
        ln_m += term / k;
        term *= z2;
    }
    double y = -s * (2 * ln_m + e * 0.69314718055994530942);
    int k = (int)(y / 0.69314718055994530942 + (y < 0 ? -0.5 : 0.5));
    double r = y - k * 0.69314718055994530942, sum = 1, t = 1;
    for (int i = 1; i < 20; i++) {
        t *= r / i;
        sum += t;
    }
    if (k < -1022)
        return 0.0;
    two.u = (uint64_t)(k + 1023) << 52;
    return sum * two.d;
}

static void build_zipf(void)
{
    double sum = 0;
    zipf_cdf = malloc(cfg.keys * sizeof *zipf_cdf);
    if (!zipf_cdf)
        die("malloc (zipf table)");
    for (unsigned long r = 0; r < cfg.keys; r++) {
        sum += inv_pow((double)(r + 1), cfg.zipf);
        zipf_cdf[r] = sum;
    }
    for (unsigned long r = 0; r < cfg.keys; r++)
        zipf_cdf[r] /= sum;
    zipf_cdf[cfg.keys - 1] = 1.0;
    /* Multiplier of the scattered rank -> key permutation: coprime to the key count. */
    perm_mult = 2654435761UL % cfg.keys;
    while (perm_mult < 2 || gcd(perm_mult, cfg.keys) != 1)
        perm_mult++;
}

/* Share of requests the hottest `frac` of keys get under this Zipf. */
static double head_share(double frac)
{
    unsigned long n = (unsigned long)((double)cfg.keys * frac);
    return n == 0 ? 0.0 : zipf_cdf[n - 1];
}

static const char HELP[] =
    "usage: ht-kvload [options]\n"
    "Zipf-skewed GET/SET load on redis-server; one JSON line per interval.\n"
    "  --host H            server (default 127.0.0.1)\n"
    "  --port N            (default 6379)\n"
    "  --unix PATH         connect to this Unix socket instead (redis --unixsocket)\n"
    "  --keys N            key count (default 200000)\n"
    "  --value-bytes N     value size (default 1024)\n"
    "  --connections N     client threads, one connection each (default 4)\n"
    "  --duration-s S      load time after populating (default 60; 0: until TERM)\n"
    "  --interval-s S      report interval (default 1)\n"
    "  --zipf S            Zipf exponent of key popularity (default 0.99; 0: uniform)\n"
    "  --get-ratio F       share of GETs, the rest SETs (default 0.9)\n"
    "  --hot-keys last|first|scattered   which keys are the popular ones (default last)\n"
    "  --no-populate       the keys are already there\n"
    "  --seed N            (default 1)\n"
    "Example: ht-kvload --keys 200000 --value-bytes 1024 --duration-s 120\n";

static void parse_args(int argc, char **argv)
{
    enum { O_HOST = 256, O_PORT, O_KEYS, O_VAL, O_CONN, O_DUR, O_INT, O_ZIPF, O_GET,
           O_HOTK, O_NOPOP, O_SEED, O_HELP, O_UNIX };
    static const struct option opts[] = {
        {"host", 1, 0, O_HOST},        {"port", 1, 0, O_PORT},
        {"keys", 1, 0, O_KEYS},        {"value-bytes", 1, 0, O_VAL},
        {"connections", 1, 0, O_CONN}, {"duration-s", 1, 0, O_DUR},
        {"interval-s", 1, 0, O_INT},   {"zipf", 1, 0, O_ZIPF},
        {"get-ratio", 1, 0, O_GET},    {"hot-keys", 1, 0, O_HOTK},
        {"no-populate", 0, 0, O_NOPOP}, {"seed", 1, 0, O_SEED},
        {"help", 0, 0, O_HELP},        {"unix", 1, 0, O_UNIX},
        {0, 0, 0, 0}};
    int o;
    cfg.host = "127.0.0.1";
    cfg.port = 6379;
    cfg.keys = 200000;
    cfg.value_bytes = 1024;
    cfg.connections = 4;
    cfg.duration_s = 60;
    cfg.interval_s = 1;
    cfg.zipf = 0.99;
    cfg.get_ratio = 0.9;
    cfg.hot_keys = 0;
    cfg.populate = 1;
    cfg.seed = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_HOST: cfg.host = optarg; break;
        case O_UNIX: cfg.unix_path = optarg; break;
        case O_PORT: cfg.port = (int)parse_num(optarg, "--port"); break;
        case O_KEYS: cfg.keys = (unsigned long)parse_num(optarg, "--keys"); break;
        case O_VAL: cfg.value_bytes = (unsigned long)parse_num(optarg, "--value-bytes"); break;
        case O_CONN: cfg.connections = (int)parse_num(optarg, "--connections"); break;
        case O_DUR: cfg.duration_s = parse_num(optarg, "--duration-s"); break;
        case O_INT: cfg.interval_s = parse_num(optarg, "--interval-s"); break;
        case O_ZIPF: cfg.zipf = parse_num(optarg, "--zipf"); break;
        case O_GET: cfg.get_ratio = parse_num(optarg, "--get-ratio"); break;
        case O_HOTK:
            for (cfg.hot_keys = 0; cfg.hot_keys < 3; cfg.hot_keys++)
                if (strcmp(optarg, HOT_KEYS[cfg.hot_keys]) == 0)
                    break;
            if (cfg.hot_keys == 3)
                usage_error("--hot-keys must be last, first or scattered");
            break;
        case O_NOPOP: cfg.populate = 0; break;
        case O_SEED: cfg.seed = (uint64_t)parse_num(optarg, "--seed"); break;
        case 'h':
        case O_HELP: fputs(HELP, stdout); exit(0);
        default: usage_error("unknown option");
        }
    }
    if (optind != argc)
        usage_error("unexpected argument");
    if (cfg.keys == 0)
        usage_error("--keys must be > 0");
    if (cfg.value_bytes == 0 || cfg.value_bytes > (1UL << 24))
        usage_error("--value-bytes must be 1..16777216");
    if (cfg.connections < 1 || cfg.connections > MAX_CONNECTIONS)
        usage_error("--connections must be 1..64");
    if (cfg.interval_s <= 0)
        usage_error("--interval-s must be > 0");
    if (cfg.get_ratio > 1)
        usage_error("--get-ratio must be 0..1");
    if (cfg.port < 1 || cfg.port > 65535)
        usage_error("--port must be 1..65535");
    {
        unsigned char probe[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET, cfg.host, probe) != 1 &&
            inet_pton(AF_INET6, cfg.host, probe) != 1)
            usage_error("--host must be a numeric IPv4 or IPv6 address");
    }
    if (cfg.seed == 0)
        cfg.seed = 1;
}

static void percentiles(const uint64_t *h, uint64_t total, double out[5])
{
    static const double qs[4] = {0.5, 0.9, 0.99, 0.999};
    uint64_t seen = 0;
    int qi = 0;
    out[4] = 0;
    for (int i = 0; i < 4; i++)
        out[i] = 0;
    if (total == 0)
        return;
    for (int b = 0; b < NBUCKETS; b++) {
        if (!h[b])
            continue;
        seen += h[b];
        while (qi < 4 && (double)seen >= qs[qi] * (double)total)
            out[qi++] = bucket_value(b);
        out[4] = bucket_value(b);
    }
}

int main(int argc, char **argv)
{
    static struct worker workers[MAX_CONNECTIONS];
    char err[256];
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    value = malloc(cfg.value_bytes);
    if (!value)
        die("malloc");
    for (unsigned long i = 0; i < cfg.value_bytes; i++)
        value[i] = (char)('a' + i % 26);
    build_zipf();

    for (int i = 0; i < cfg.connections; i++) {
        workers[i].index = i;
        workers[i].rng = cfg.seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i + 1;
        workers[i].conn.fd = connect_to(cfg.host, cfg.port, err, sizeof err);
        if (workers[i].conn.fd < 0) {
            fprintf(stderr, "ht-kvload: %s\n", err);
            return 1;
        }
    }
    double t_pop = now_s();
    if (cfg.populate)
        populate(workers[0].conn.fd);
    double t0 = now_s();
    char server[160];
    if (cfg.unix_path)
        snprintf(server, sizeof server, "unix:%s", cfg.unix_path);
    else
        snprintf(server, sizeof server, "%s:%d", cfg.host, cfg.port);
    printf("{\"type\":\"start\",\"server\":\"%s\",\"unix_s\":%.3f,\"keys\":%lu,"
           "\"value_bytes\":%lu,"
           "\"connections\":%d,\"zipf\":%.3f,\"get_ratio\":%.3f,\"hot_keys\":\"%s\","
           "\"populated\":%s,\"populate_s\":%.3f,\"top1pct_share\":%.4f,"
           "\"top10pct_share\":%.4f}\n",
           server, unix_s(), cfg.keys, cfg.value_bytes, cfg.connections, cfg.zipf,
           cfg.get_ratio, HOT_KEYS[cfg.hot_keys], cfg.populate ? "true" : "false",
           t0 - t_pop, head_share(0.01), head_share(0.10));
    if (stop_flag)
        return 0;
    for (int i = 0; i < cfg.connections; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0)
            die("pthread_create");

    static uint64_t prev_hist[NBUCKETS];
    uint64_t prev_ops = 0, prev_gets = 0, prev_sets = 0, prev_miss = 0;
    double last = t0, next = t0 + cfg.interval_s;
    int failed = 0;
    for (;;) {
        double t = now_s();
        int final = stop_flag || (cfg.duration_s > 0 && t - t0 >= cfg.duration_s);
        for (int i = 0; i < cfg.connections; i++)
            if (__atomic_load_n(&workers[i].failed, __ATOMIC_ACQUIRE))
                failed = 1;
        final |= failed;
        if (!final && t < next) {
            double wait = next - t;
            if (wait > 0.05)
                wait = 0.05; /* notice the end or a failure soon */
            struct timespec ts = {0, (long)(wait * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        uint64_t hist[NBUCKETS] = {0}, ops = 0, gets = 0, sets = 0, miss = 0;
        for (int i = 0; i < cfg.connections; i++) {
            ops += __atomic_load_n(&workers[i].ops, __ATOMIC_RELAXED);
            gets += __atomic_load_n(&workers[i].gets, __ATOMIC_RELAXED);
            sets += __atomic_load_n(&workers[i].sets, __ATOMIC_RELAXED);
            miss += __atomic_load_n(&workers[i].misses, __ATOMIC_RELAXED);
            for (int b = 0; b < NBUCKETS; b++)
                hist[b] += __atomic_load_n(&workers[i].hist[b], __ATOMIC_RELAXED);
        }
        uint64_t delta[NBUCKETS], n = 0;
        for (int b = 0; b < NBUCKETS; b++) {
            delta[b] = hist[b] - prev_hist[b];
            n += delta[b];
            prev_hist[b] = hist[b];
        }
        double p[5], span = t - last;
        percentiles(delta, n, p);
        printf("{\"type\":\"%s\",\"t_s\":%.3f,\"unix_s\":%.3f,\"ops_per_s\":%.1f,"
               "\"gets\":%lu,\"sets\":%lu,\"misses\":%lu,\"ops\":%lu,"
               "\"lat_p50_us\":%.0f,\"lat_p90_us\":%.0f,\"lat_p99_us\":%.0f,"
               "\"lat_p999_us\":%.0f,\"lat_max_us\":%.0f",
               final ? "end" : "sample", t - t0, unix_s(),
               span > 0 ? (double)(ops - prev_ops) / span : 0.0,
               (unsigned long)(gets - prev_gets), (unsigned long)(sets - prev_sets),
               (unsigned long)(miss - prev_miss), (unsigned long)ops, p[0], p[1], p[2],
               p[3], p[4]);
        if (final) {
            double pall[5];
            percentiles(hist, ops, pall);
            printf(",\"ops_per_s_total\":%.1f,\"lat_p99_us_total\":%.0f,"
                   "\"misses_total\":%lu",
                   t - t0 > 0 ? (double)ops / (t - t0) : 0.0, pall[2],
                   (unsigned long)miss);
        }
        printf("}\n");
        prev_ops = ops;
        prev_gets = gets;
        prev_sets = sets;
        prev_miss = miss;
        last = t;
        while (next <= t)
            next += cfg.interval_s;
        if (final)
            break;
    }
    stop_flag = 1;
    for (int i = 0; i < cfg.connections; i++)
        shutdown(workers[i].conn.fd, SHUT_RDWR);
    for (int i = 0; i < cfg.connections; i++)
        pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < cfg.connections; i++)
        if (workers[i].failed) {
            fprintf(stderr, "ht-kvload: connection %d: %s\n", i, workers[i].error);
            return 1;
        }
    return 0;
}
