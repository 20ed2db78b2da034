/*
 * bench_maglev.c - the Maglev build (native/src/maglev.c) alone: CPU time per build, robust to a shared VM.
 *
 * For each point (edges @ size) it builds the table BUILDS times with the names perf/run uses ("edge-00", ...),
 * timing each build with the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID: time the thread was not running does
 * not count) and the TSC, and reports the minimum and the median. The minimum is what the code costs when the
 * caches are its own; the median shows what a neighbour's cache traffic adds. Every build must give the same
 * table (checked with a checksum of the first build).
 *
 *   pydp-bench-maglev [--builds N] [--json] [--weights] [EDGES@SIZE ...]     (default 2@65537 16@65537
 *                                                                             2@655373 16@655373, 201 builds)
 *
 * --weights gives edge i the weight i + 1. Prints a line per point, or with --json one JSON object. Not a test:
 * speed is never asserted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

#include "pydp.h"

#define BM_MAX_POINTS 32

static uint8_t bm_table[PYDP_MAGLEV_MAX_SIZE];

static int
bm_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double
bm_thread_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t
bm_sum(const uint8_t *t, uint32_t size)
{
    uint64_t h = 1469598103934665603ULL;
    uint32_t i;

    for (i = 0; i < size; i++)
        h = (h ^ t[i]) * 1099511628211ULL;
    return h;
}

static void
bm_usage(void)
{
    fprintf(stderr, "usage: pydp-bench-maglev [--builds N] [--json] [--weights] [EDGES@SIZE ...]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    static const char *defaults[] = { "2@65537", "16@65537", "2@655373", "16@655373" };
    const char *points[BM_MAX_POINTS];
    uint32_t npoints = 0, builds = 201, p, b, i;
    int json = 0, weighted = 0;
    double *cpu, *cyc;
    char err[PYDP_ERR_LEN];

    for (i = 1; i < (uint32_t)argc; i++) {
        if (strcmp(argv[i], "--builds") == 0 && i + 1 < (uint32_t)argc)
            builds = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--weights") == 0)
            weighted = 1;
        else if (argv[i][0] == '-' || npoints == BM_MAX_POINTS)
            bm_usage();
        else
            points[npoints++] = argv[i];
    }
    if (builds == 0 || builds > 100000)
        bm_usage();
    if (npoints == 0)
        for (; npoints < 4; npoints++)
            points[npoints] = defaults[npoints];
    cpu = calloc(builds, sizeof(*cpu));
    cyc = calloc(builds, sizeof(*cyc));
    if (cpu == NULL || cyc == NULL)
        return 2;

    if (json)
        printf("{\"builds\": %u, \"weights\": %s, \"points\": {", builds, weighted ? "true" : "false");
    for (p = 0; p < npoints; p++) {
        char names_buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
        const char *names[PYDP_MAX_EDGES];
        uint16_t weights[PYDP_MAX_EDGES];
        unsigned n = 0, size = 0;
        uint64_t want = 0;

        if (sscanf(points[p], "%u@%u", &n, &size) != 2 || n == 0 || n > PYDP_MAX_EDGES)
            bm_usage();
        for (i = 0; i < n; i++) {
            snprintf(names_buf[i], PYDP_NAME_LEN, "edge-%02u", i);
            names[i] = names_buf[i];
            weights[i] = (uint16_t)(i + 1);
        }
        for (b = 0; b <= builds; b++) {         /* build 0 warms up and gives the checksum */
            double t0 = bm_thread_ns();
            uint64_t c0 = __rdtsc();
            int rc = pydp_maglev_build(names, weighted ? weights : NULL, n, size, bm_table, err);
            uint64_t c1 = __rdtsc();
            double t1 = bm_thread_ns();

            if (rc != 0) {
                fprintf(stderr, "bench_maglev: %s: %s\n", points[p], err);
                return 1;
            }
            if (b == 0) {
                want = bm_sum(bm_table, size);
                continue;
            }
            cpu[b - 1] = (t1 - t0) / 1e6;
            cyc[b - 1] = (double)(c1 - c0);
        }
        if (bm_sum(bm_table, size) != want) {
            fprintf(stderr, "bench_maglev: %s: the table changed between builds\n", points[p]);
            return 1;
        }
        qsort(cpu, builds, sizeof(*cpu), bm_cmp);
        qsort(cyc, builds, sizeof(*cyc), bm_cmp);
        if (json)
            printf("%s\"%u@%u\": {\"cpu_ms_min\": %.4f, \"cpu_ms_median\": %.4f, \"cycles_min\": %.0f, "
                   "\"cycles_median\": %.0f, \"checksum\": \"%016llx\"}", p ? ", " : "", n, size, cpu[0],
                   cpu[builds / 2], cyc[0], cyc[builds / 2], (unsigned long long)want);
        else
            printf("%2u@%-7u cpu ms min %.4f median %.4f  TSC cycles min %.0f median %.0f  table %016llx\n", n,
                   size, cpu[0], cpu[builds / 2], cyc[0], cyc[builds / 2], (unsigned long long)want);
        fflush(stdout);
    }
    if (json)
        printf("}}\n");
    free(cpu);
    free(cyc);
    return 0;
}
