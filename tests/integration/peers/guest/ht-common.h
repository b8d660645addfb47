/*
 * What the guest programs ht-workload.c and ht-kvload.c share (not part of the
 * product): stop on SIGTERM/SIGINT, the monotonic and wall clocks, and the exit-2
 * messages for bad arguments. Define HT_PROG, the program's name in messages,
 * before including this file.
 */
#ifndef HT_COMMON_H
#define HT_COMMON_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef HT_PROG
#error "define HT_PROG (the program's name) before including ht-common.h"
#endif

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double unix_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage_error(const char *msg)
{
    fprintf(stderr, HT_PROG ": %s (see --help)\n", msg);
    exit(2);
}

/* A number argument >= 0; anything else is a usage error (exit 2). */
static double parse_num(const char *s, const char *name)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0) {
        fprintf(stderr, HT_PROG ": %s must be a number >= 0, got '%s'\n", name, s);
        exit(2);
    }
    return v;
}

#endif
