/*
 * gen_engine.h - pydp-gen's spec (packet templates + field-engine programs) and the per-packet field engine.
 *
 * The spec is written by perf/trex/compile.py from a TRex stateless profile; its format is described there.
 * This part has no DPDK in it: it reads the spec and rewrites a frame in place.
 */
#ifndef PYDP_GEN_ENGINE_H
#define PYDP_GEN_ENGINE_H

#include <stdint.h>
#include <stdio.h>

#define GEN_MAX_STREAMS 8
#define GEN_MAX_SLOTS 16
#define GEN_MAX_INSNS 32
#define GEN_MAX_ORDER 1024
#define GEN_FRAME_MIN 60
#define GEN_FRAME_MAX 1514

enum gen_op {
    GEN_OP_INC, GEN_OP_DEC, GEN_OP_RANDOM, GEN_OP_RLIMIT, GEN_OP_TUPLE, GEN_OP_WRITE, GEN_OP_WMASK, GEN_OP_FIXV4,
};

struct gen_insn {
    uint8_t op;                 /* enum gen_op */
    uint8_t slot;               /* variable (tuple: address in slot, port in slot + 1) */
    uint8_t width;              /* write: bytes written; wmask: cast size; var: variable size */
    uint8_t big;                /* write/wmask: big endian */
    uint16_t offset;            /* write/wmask/fixv4: offset in the frame */
    int8_t shift;               /* wmask */
    uint64_t a, b, c, d;        /* var: min max step init; rlimit: min max limit seed; tuple: ip_min ip_max
                                   port_min port_max (limit in e); write/wmask: add, mask */
    uint64_t e;
};

/* Per-stream state of the variables; reset by gen_stream_reset. */
struct gen_state {
    uint64_t val[GEN_MAX_SLOTS];
    uint64_t count[GEN_MAX_INSNS];  /* tuple: flow index; rlimit: values drawn since the last reseed */
    uint64_t rng[GEN_MAX_INSNS];
    uint8_t started;
};

struct gen_stream {
    uint8_t frame[GEN_FRAME_MAX];
    uint32_t len;
    double weight;
    uint32_t nb_insns;
    struct gen_insn insns[GEN_MAX_INSNS];
    struct gen_state st;
};

struct gen_spec {
    uint32_t nb_streams;
    struct gen_stream streams[GEN_MAX_STREAMS];
    uint32_t order_len;
    uint8_t order[GEN_MAX_ORDER];
};

/* Reads a spec file. On error returns -1 with a message (file:line: why) in err. */
int gen_spec_load(struct gen_spec *spec, FILE *f, const char *name, char *err, size_t errlen);

void gen_stream_reset(struct gen_stream *s);

/* Runs the stream's program for its next packet on frame (which holds the stream's template). */
void gen_stream_apply(struct gen_stream *s, uint8_t *frame);

#endif
