/*
 * fuzz_parse.c - libFuzzer harness of the packet parser.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative/include native/src/parse.c native/tests/fuzz_parse.c \
 *         -o /tmp/fuzz_parse && /tmp/fuzz_parse -max_total_time=30 native/tests/corpus/parse
 *
 * Besides memory safety (the sanitizers), it checks the parser's output invariants and aborts on a violation.
 * Inputs are mutated by fuzz_mutator.h (layer-aware: Ethernet, VLAN, IPv4/IPv6, extension headers, L4, ICMP
 * quotes) as well as by libFuzzer's byte mutations; -DPYDP_FUZZ_RAW leaves only the latter.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pydp.h"
#include "fuzz_mutator.h"

static int
fz_zero(const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pydp_pkt_info info;
    uint32_t len;
    int klass;

    if (size > UINT32_MAX)
        return 0;
    len = (uint32_t)size;
    memset(&info, 0xa5, sizeof(info));
    klass = pydp_parse(data, len, &info);

    if (klass < PYDP_CLS_MALFORMED || klass > PYDP_CLS_EXC_PRIO || info.klass != klass)
        abort();
    if (len < 14 && klass != PYDP_CLS_MALFORMED)
        abort();
    if (info.key.pad0 != 0)
        abort();
    if (klass == PYDP_CLS_IP) {
        if (info.family != PYDP_AF_INET && info.family != PYDP_AF_INET6)
            abort();
        if (info.key.family != info.family)
            abort();
        if ((uint32_t)info.l3_off + info.l3_len > len)
            abort();
        if (info.l3_len < (info.family == PYDP_AF_INET ? 20 : 40))
            abort();
        /* IPv4 addresses in the first 4 bytes, the rest zero */
        if (info.family == PYDP_AF_INET &&
            (!fz_zero(info.key.src + 4, 12) || !fz_zero(info.key.dst + 4, 12) || !fz_zero(info.dst + 4, 12)))
            abort();
        /* fragments carry no ports */
        if ((info.flags & PYDP_PF_FRAGMENT) && (info.key.sport != 0 || info.key.dport != 0))
            abort();
        if (info.flags & PYDP_PF_ND)
            abort();
    }
    return 0;
}
