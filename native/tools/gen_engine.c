/*
 * gen_engine.c - pydp-gen's spec reader and field engine (the subset of TRex's that perf/trex/ uses).
 *
 * Every instruction is a full overwrite of its bytes (a masked write keeps the template's other bits), so a
 * frame that already holds the stream's template - pydp-gen's mbufs keep theirs - only needs the program run.
 */
#include "gen_engine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *name, unsigned line, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(err, errlen, "%s:%u: ", name, line);

    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < errlen)
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Unsigned decimal numbers; returns how many were read, -1 on a malformed one. */
static int read_u64s(char **save, uint64_t *out, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        char *tok = strtok_r(NULL, " \t", save), *end;

        if (tok == NULL)
            return i;
        errno = 0;
        if (tok[0] == '-')
            return -1;
        out[i] = strtoull(tok, &end, 10);
        if (errno != 0 || *end != '\0')
            return -1;
    }
    return strtok_r(NULL, " \t", save) == NULL ? n : -1;
}

static int hex_frame(struct gen_stream *s, const char *hex)
{
    size_t len = strlen(hex), i;

    if (len % 2 || len / 2 < GEN_FRAME_MIN || len / 2 > GEN_FRAME_MAX)
        return -1;
    for (i = 0; i < len / 2; i++) {
        unsigned int b;

        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return -1;
        s->frame[i] = (uint8_t)b;
    }
    s->len = (uint32_t)(len / 2);
    return 0;
}

static int var_size_ok(uint64_t size)
{
    return size == 1 || size == 2 || size == 4 || size == 8;
}

static uint64_t size_max(uint64_t size)
{
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1;
}

/* One instruction line (its keyword already read) of the current stream. */
static const char *parse_insn(struct gen_stream *s, const char *kw, char **save)
{
    struct gen_insn *in;
    uint64_t v[7];

    if (s->nb_insns >= GEN_MAX_INSNS)
        return "too many instructions in one stream";
    in = &s->insns[s->nb_insns];
    memset(in, 0, sizeof(*in));
    if (strcmp(kw, "var") == 0) {
        char *slot = strtok_r(NULL, " \t", save), *size = strtok_r(NULL, " \t", save);
        char *op = strtok_r(NULL, " \t", save);

        if (slot == NULL || size == NULL || op == NULL || read_u64s(save, v, 4) != 4)
            return "var SLOT SIZE inc|dec|random INIT MIN MAX STEP";
        in->op = strcmp(op, "inc") == 0 ? GEN_OP_INC : strcmp(op, "dec") == 0 ? GEN_OP_DEC
                 : strcmp(op, "random") == 0 ? GEN_OP_RANDOM : 0xff;
        if (in->op == 0xff)
            return "var: the operation is inc, dec or random";
        in->slot = (uint8_t)atoi(slot);
        in->width = (uint8_t)atoi(size);
        in->d = v[0], in->a = v[1], in->b = v[2], in->c = v[3];
        if (!var_size_ok(in->width) || in->a > in->b || in->b > size_max(in->width) || in->d < in->a
            || in->d > in->b || in->c == 0)
            return "var: size, range, init or step out of bounds";
    } else if (strcmp(kw, "rvar") == 0) {
        if (read_u64s(save, v, 6) != 6)
            return "rvar SLOT SIZE LIMIT SEED MIN MAX";
        in->op = GEN_OP_RLIMIT;
        in->slot = (uint8_t)v[0], in->width = (uint8_t)v[1];
        in->c = v[2], in->d = v[3], in->a = v[4], in->b = v[5];
        if (!var_size_ok(v[1]) || in->a > in->b || in->b > size_max(v[1]) || in->c == 0)
            return "rvar: size, range or limit out of bounds";
    } else if (strcmp(kw, "tuple") == 0) {
        if (read_u64s(save, v, 6) != 6)
            return "tuple SLOT IP_MIN IP_MAX PORT_MIN PORT_MAX LIMIT";
        in->op = GEN_OP_TUPLE;
        in->slot = (uint8_t)v[0];
        in->a = v[1], in->b = v[2], in->c = v[3], in->d = v[4], in->e = v[5];
        if (in->a > in->b || in->b > UINT32_MAX || in->c > in->d || in->d > UINT16_MAX || in->e == 0
            || in->slot + 1 >= GEN_MAX_SLOTS)
            return "tuple: address, port or limit out of bounds";
    } else if (strcmp(kw, "write") == 0) {
        if (read_u64s(save, v, 5) != 5)
            return "write SLOT OFFSET WIDTH ADD BIG";
        in->op = GEN_OP_WRITE;
        in->slot = (uint8_t)v[0], in->offset = (uint16_t)v[1], in->width = (uint8_t)v[2];
        in->a = v[3], in->big = v[4] != 0;
        if (!var_size_ok(v[2]) || v[1] + v[2] > s->len)
            return "write: width or offset out of bounds";
    } else if (strcmp(kw, "wmask") == 0) {
        char *slot = strtok_r(NULL, " \t", save), *off = strtok_r(NULL, " \t", save);
        char *cast = strtok_r(NULL, " \t", save), *mask = strtok_r(NULL, " \t", save);
        char *shift = strtok_r(NULL, " \t", save);

        if (slot == NULL || off == NULL || cast == NULL || mask == NULL || shift == NULL || read_u64s(save, v, 2) != 2)
            return "wmask SLOT OFFSET CAST MASK SHIFT ADD BIG";
        in->op = GEN_OP_WMASK;
        in->slot = (uint8_t)atoi(slot), in->offset = (uint16_t)atoi(off), in->width = (uint8_t)atoi(cast);
        in->b = strtoull(mask, NULL, 10), in->shift = (int8_t)atoi(shift);
        in->a = v[0], in->big = v[1] != 0;
        if ((in->width != 1 && in->width != 2 && in->width != 4) || (uint32_t)in->offset + in->width > s->len
            || atoi(shift) < -63 || atoi(shift) > 63)
            return "wmask: cast, offset or shift out of bounds";
    } else if (strcmp(kw, "fixv4") == 0) {
        if (read_u64s(save, v, 1) != 1)
            return "fixv4 OFFSET";
        in->op = GEN_OP_FIXV4;
        in->offset = (uint16_t)v[0];
        if (v[0] + 20 > s->len || (s->frame[v[0]] >> 4) != 4 || v[0] + (s->frame[v[0]] & 0xf) * 4u > s->len
            || (s->frame[v[0]] & 0xf) < 5)
            return "fixv4: no IPv4 header at that offset";
    } else {
        return "unknown instruction";
    }
    if (in->slot >= GEN_MAX_SLOTS)
        return "variable slot out of bounds";
    s->nb_insns++;
    return NULL;
}

int gen_spec_load(struct gen_spec *spec, FILE *f, const char *name, char *err, size_t errlen)
{
    static char line[2 * GEN_FRAME_MAX + 4 * GEN_MAX_ORDER + 64];
    unsigned lineno = 0;
    int header = 0;

    memset(spec, 0, sizeof(*spec));
    while (fgets(line, sizeof(line), f) != NULL) {
        char *save = NULL, *kw;
        size_t len = strlen(line);

        lineno++;
        if (len == sizeof(line) - 1 && line[len - 1] != '\n')
            return fail(err, errlen, name, lineno, "line too long");
        line[strcspn(line, "\r\n")] = '\0';
        kw = strtok_r(line, " \t", &save);
        if (kw == NULL || kw[0] == '#')
            continue;
        if (!header) {
            char *ver = strtok_r(NULL, " \t", &save);

            if (strcmp(kw, "pydp-gen-spec") != 0 || ver == NULL || strcmp(ver, "1") != 0)
                return fail(err, errlen, name, lineno, "not a pydp-gen spec (version 1)");
            header = 1;
        } else if (strcmp(kw, "stream") == 0) {
            char *w = strtok_r(NULL, " \t", &save), *hex = strtok_r(NULL, " \t", &save), *end;
            struct gen_stream *s;

            if (spec->nb_streams >= GEN_MAX_STREAMS)
                return fail(err, errlen, name, lineno, "more than %d streams", GEN_MAX_STREAMS);
            s = &spec->streams[spec->nb_streams];
            if (w == NULL || hex == NULL)
                return fail(err, errlen, name, lineno, "stream WEIGHT HEX-FRAME");
            s->weight = strtod(w, &end);
            if (*end != '\0' || !(s->weight > 0))
                return fail(err, errlen, name, lineno, "stream weight '%s'", w);
            if (hex_frame(s, hex) != 0)
                return fail(err, errlen, name, lineno, "the frame is not %d..%d bytes of hex", GEN_FRAME_MIN,
                            GEN_FRAME_MAX);
            spec->nb_streams++;
        } else if (strcmp(kw, "order") == 0) {
            char *tok;

            while ((tok = strtok_r(NULL, " \t", &save)) != NULL) {
                char *end;
                long v = strtol(tok, &end, 10);

                if (*end != '\0' || v < 0 || (uint32_t)v >= spec->nb_streams || spec->order_len >= GEN_MAX_ORDER)
                    return fail(err, errlen, name, lineno, "order: '%s' is not a stream (or too many)", tok);
                spec->order[spec->order_len++] = (uint8_t)v;
            }
        } else {
            const char *why;

            if (spec->nb_streams == 0)
                return fail(err, errlen, name, lineno, "'%s' before the first stream", kw);
            why = parse_insn(&spec->streams[spec->nb_streams - 1], kw, &save);
            if (why != NULL)
                return fail(err, errlen, name, lineno, "%s", why);
        }
    }
    if (!header || spec->nb_streams == 0)
        return fail(err, errlen, name, lineno, "no stream");
    if (spec->order_len == 0) {
        uint32_t i;

        for (i = 0; i < spec->nb_streams; i++)
            spec->order[spec->order_len++] = (uint8_t)i;
    }
    for (uint32_t i = 0; i < spec->nb_streams; i++)
        gen_stream_reset(&spec->streams[i]);
    return 0;
}

void gen_stream_reset(struct gen_stream *s)
{
    uint32_t i;

    memset(&s->st, 0, sizeof(s->st));
    for (i = 0; i < s->nb_insns; i++)
        s->st.rng[i] = s->insns[i].op == GEN_OP_RLIMIT ? s->insns[i].d : 0x9e3779b97f4a7c15ull * (i + 1);
}

static inline uint64_t xorshift(uint64_t *x)
{
    uint64_t v = *x ? *x : 0x2545f4914f6cdd1dull;

    v ^= v << 13;
    v ^= v >> 7;
    v ^= v << 17;
    *x = v;
    return v;
}

static inline uint64_t in_range(uint64_t r, uint64_t lo, uint64_t hi)
{
    uint64_t span = hi - lo + 1;

    return span == 0 ? r : lo + r % span;
}

static inline void put(uint8_t *p, uint64_t v, unsigned width, int big)
{
    unsigned i;

    for (i = 0; i < width; i++)
        p[big ? width - 1 - i : i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t get(const uint8_t *p, unsigned width, int big)
{
    uint64_t v = 0;
    unsigned i;

    for (i = 0; i < width; i++)
        v |= (uint64_t)p[big ? width - 1 - i : i] << (8 * i);
    return v;
}

static inline void fix_ipv4(uint8_t *ip)
{
    unsigned hlen = (ip[0] & 0xf) * 4u, i;
    uint32_t sum = 0;

    ip[10] = ip[11] = 0;
    for (i = 0; i < hlen; i += 2)
        sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    ip[10] = (uint8_t)(sum >> 8);
    ip[11] = (uint8_t)sum;
}

/* A variable's next value: the first packet carries init (inc/dec) or a first draw (random). */
static inline void step_var(const struct gen_insn *in, struct gen_state *st, uint32_t i, int first)
{
    uint64_t *v = &st->val[in->slot];

    switch (in->op) {
    case GEN_OP_INC:
        *v = first ? in->d : (in->b - *v < in->c ? in->a : *v + in->c);
        break;
    case GEN_OP_DEC:
        *v = first ? in->d : (*v - in->a < in->c ? in->b : *v - in->c);
        break;
    case GEN_OP_RANDOM:
        *v = in_range(xorshift(&st->rng[i]), in->a, in->b);
        break;
    case GEN_OP_RLIMIT:
        if (st->count[i]++ == in->c) {         /* `limit` values drawn: the sequence starts again */
            st->count[i] = 1;
            st->rng[i] = in->d;
        }
        *v = in_range(xorshift(&st->rng[i]), in->a, in->b);
        break;
    case GEN_OP_TUPLE:
        /* address first; the port steps when the address wraps; limit tuples, then from the start */
        if (first || ++st->count[i] == in->e) {
            st->count[i] = 0;
            v[0] = in->a;
            v[1] = in->c;
        } else if (v[0] == in->b) {
            v[0] = in->a;
            v[1] = v[1] == in->d ? in->c : v[1] + 1;
        } else {
            v[0]++;
        }
        break;
    }
}

void gen_stream_apply(struct gen_stream *s, uint8_t *frame)
{
    struct gen_state *st = &s->st;
    int first = !st->started;
    uint32_t i;

    st->started = 1;
    for (i = 0; i < s->nb_insns; i++) {
        const struct gen_insn *in = &s->insns[i];

        switch (in->op) {
        case GEN_OP_WRITE:
            put(frame + in->offset, st->val[in->slot] + in->a, in->width, in->big);
            break;
        case GEN_OP_WMASK: {
            uint64_t v = st->val[in->slot] + in->a;
            uint64_t old = get(frame + in->offset, in->width, in->big);

            v = in->shift >= 0 ? v << in->shift : v >> -in->shift;
            put(frame + in->offset, (old & ~in->b) | (v & in->b), in->width, in->big);
            break;
        }
        case GEN_OP_FIXV4:
            fix_ipv4(frame + in->offset);
            break;
        default:
            step_var(in, st, i, first);
            break;
        }
    }
}
