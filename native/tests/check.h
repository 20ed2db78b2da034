/* check.h - the assertion helpers of pydp's C unit tests (one program per concern, run by ctest). */
#ifndef PYDP_CHECK_H
#define PYDP_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed;
static int check_failed;

#define CHECK(cond) do {                                                            \
        if (cond) { check_passed++; }                                               \
        else { check_failed++; fprintf(stderr, "%s:%d: CHECK failed: %s\n",         \
                                       __FILE__, __LINE__, #cond); }                \
    } while (0)

#define CHECK_EQ(a, b) do {                                                         \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);             \
        if (check_a_ == check_b_) { check_passed++; }                               \
        else { check_failed++; fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n", \
                                       __FILE__, __LINE__, #a, check_a_, #b, check_b_); } \
    } while (0)

#define CHECK_MEM(a, b, n) CHECK(memcmp((a), (b), (n)) == 0)

/* Prints the closing line ctest users expect and returns the exit code. */
static inline int check_report(const char *suite)
{
    printf("%s: %d passed, %d failed\n", suite, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
