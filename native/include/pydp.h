/*
 * pydp.h - the public C API of the pydp fast path and the layout of its shared memory.
 *
 * This header is the single definition of the shared-memory layout: the data plane (C) and the control plane
 * (Python, through cffi) both see it. The part between the cdef markers is handed verbatim to cffi's cdef(), so it
 * keeps to what cffi parses: integer #defines, enums, plain structs with explicit padding, and prototypes.
 * Every struct placed in shared memory has a fixed size checked by static assertions in native/src/shm.c.
 *
 * Conventions: addresses are in network byte order in 16-byte fields (IPv4 in the first 4 bytes, the rest zero);
 * ports are in network byte order; times are milliseconds of CLOCK_MONOTONIC (pydp_now_ms()).
 */
#ifndef PYDP_H
#define PYDP_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */

#define PYDP_SHM_MAGIC 0x314d534850445950
#define PYDP_LAYOUT_VERSION 6

#define PYDP_MAX_CLUSTERS 64
#define PYDP_MAX_EDGES 16
#define PYDP_MAX_WORKERS 16
#define PYDP_MAX_PORTS 4
#define PYDP_NAME_LEN 32
#define PYDP_VIP_INDEX_SIZE 256
#define PYDP_MAGLEV_DEFAULT_SIZE 65537
#define PYDP_MAGLEV_MAX_SIZE 655373
#define PYDP_MAGLEV_NONE 255
#define PYDP_IDLE_DEEP_AFTER_MS 100   /* a worker idle this long backs off to idle_sleep_deep_us */
#define PYDP_FLOW_WAYS 6         /* ways per bucket: all that a hit reads of them fits one cache line */
#define PYDP_FLOW_SIG_SYN 2        /* bit of a way's signature: the flow is half-open (state TCP_SYN) */
#define PYDP_FLOW_PIN_CHECK 0x80   /* bit of a way's pin byte: confirm the pin against the record first (flow sync) */
#define PYDP_FLOW_PKTS_FOLD 256    /* a way's hot packet counter folds into the flow's packets at this count */
#define PYDP_CMD_RING_SIZE 256
#define PYDP_EVENT_RING_SIZE 4096
#define PYDP_ERR_LEN 256

enum pydp_family {
    PYDP_AF_NONE = 0,
    PYDP_AF_INET = 4,
    PYDP_AF_INET6 = 6
};

enum pydp_edge_state {
    PYDP_EDGE_EMPTY = 0,     /* slot not in use */
    PYDP_EDGE_UP = 1,        /* gets new flows and keeps its flows */
    PYDP_EDGE_DRAINING = 2,  /* no new flows; keeps its flows */
    PYDP_EDGE_DOWN = 3,      /* failed health checks: no new flows, its flows are re-hashed */
    PYDP_EDGE_DISABLED = 4   /* administratively off: like DOWN */
};

enum pydp_dsr_mode {
    PYDP_DSR_L2 = 0,         /* rewrite the MAC addresses, IP packet untouched */
    PYDP_DSR_IPIP = 1        /* IP-in-IP (IPv4 in IPv4, IPv6 in IPv6) to the edge */
};

enum pydp_flow_state {
    PYDP_FLOW_EMPTY = 0,
    PYDP_FLOW_TCP_SYN = 1,   /* opened by a SYN: short timeout until the handshake completes */
    PYDP_FLOW_TCP_EST = 2,
    PYDP_FLOW_TCP_FIN = 3,   /* FIN or RST seen: short timeout */
    PYDP_FLOW_UDP = 4,
    PYDP_FLOW_OTHER = 5      /* ICMP, IPSec and other protocols */
};

/* Verdict classes of the parser (pydp_parse). */
enum pydp_class {
    PYDP_CLS_MALFORMED = 0,  /* truncated or inconsistent headers: counted and dropped */
    PYDP_CLS_IP = 1,         /* IPv4/IPv6 packet: forwarded if its destination is a cluster IP, else exception */
    PYDP_CLS_EXC = 2,        /* not IP (LLDP, VLAN, ...): exception path, bulk class */
    PYDP_CLS_EXC_PRIO = 3    /* ARP, CARP/VRRP (proto 112), IPv6 neighbour discovery: exception path, priority */
};

/* Classes of the exception path (pydp_exc_class): each has its own token bucket per worker, its own counter
 * of frames handed to the kernel and its own drop reason, so a flood of one class cannot use another's budget. */
enum pydp_exc_class {
    PYDP_EXC_BULK = 0,       /* everything else: ICMP, other traffic to the appliance, non-IP (best effort) */
    PYDP_EXC_ARP = 1,        /* ARP, IPv6 neighbour discovery (GARP, neighbour resolution) */
    PYDP_EXC_CARP = 2,       /* CARP/VRRP (IP protocol / next header 112) with TTL / hop limit 255 */
    PYDP_EXC_CONTROL = 3,    /* routing control to the appliance: BGP (TCP 179), BFD (UDP 3784, 4784) */
    PYDP_EXC__COUNT = 4
};

/* Flags of struct pydp_pkt_info. */
#define PYDP_PF_FRAGMENT 1       /* IPv4 fragment or IPv6 fragment header: key has no ports */
#define PYDP_PF_ICMP_ERROR 2     /* ICMP/ICMPv6 error: key rebuilt from the embedded header (reversed) */
#define PYDP_PF_IPSEC 4          /* ESP, AH, UDP 500 or UDP 4500 */
#define PYDP_PF_ICMP_ECHO 8      /* echo request: key sport = identifier */
#define PYDP_PF_ND 16            /* IPv6 neighbour discovery (types 133-137) */

/* Drop reasons (index into pydp_port_stats.drops). */
enum pydp_drop {
    PYDP_DROP_MALFORMED = 0,     /* truncated or inconsistent headers */
    PYDP_DROP_NOT_ACTIVE = 1,    /* cluster IP owned by the peer (CARP backup) */
    PYDP_DROP_DISABLED = 2,      /* cluster disabled */
    PYDP_DROP_NO_EDGE = 3,       /* no edge up in the cluster */
    PYDP_DROP_EXC_RATELIMIT = 4, /* exception-path bulk class over its rate */
    PYDP_DROP_EXC_ARP_RATELIMIT = 5, /* exception-path ARP/ND class over its rate */
    PYDP_DROP_EXC_NONE = 6,      /* exception traffic but no exception port */
    PYDP_DROP_EXC_TX = 7,        /* exception port queue full */
    PYDP_DROP_TX = 8,            /* data port queue full */
    PYDP_DROP_NO_HEADROOM = 9,   /* IP-in-IP: no room for the outer header */
    PYDP_DROP_FAMILY = 10,       /* IP-in-IP: edge of the other address family */
    PYDP_DROP_LOOP = 11,         /* a frame from our own MAC (our transmission seen again) */
    PYDP_DROP_EXC_CARP_RATELIMIT = 12,    /* exception-path CARP class over its rate */
    PYDP_DROP_EXC_CONTROL_RATELIMIT = 13, /* exception-path control class (BGP, BFD) over its rate */
    PYDP_DROP__COUNT = 14
};
#define PYDP_DROP_SLOTS 16

/* ---- configuration (double-buffered in shared memory) ---- */

struct pydp_edge {
    uint8_t  addr[16];
    uint8_t  mac[6];
    uint8_t  state;          /* enum pydp_edge_state */
    uint8_t  family;         /* enum pydp_family */
    uint16_t weight;         /* relative share of new flows, 1..65535 */
    uint16_t uid;            /* changes whenever the slot is given to another edge */
    uint32_t pad0;
    char     name[32];       /* NUL-terminated */
};                            /* 64 bytes */

struct pydp_cluster {
    char     name[32];
    uint8_t  vip[16];        /* the cluster IP */
    uint8_t  family;         /* enum pydp_family; PYDP_AF_NONE = slot unused */
    uint8_t  enabled;
    uint8_t  dsr_mode;       /* enum pydp_dsr_mode */
    uint8_t  ipsec_local;    /* IPSec local termination: ESP/AH/IKE/NAT-T hash on (client IP, cluster IP) */
    uint16_t uid;            /* changes whenever the slot is given to another cluster */
    uint8_t  owned;          /* 1 = this appliance forwards for the cluster IP (CARP master, standalone, --own-all).
                              * Part of the generation: ownership is published with the cluster it belongs to, so
                              * a freed or reused slot can never keep the previous cluster's ownership. */
    uint8_t  pad0;
    uint32_t maglev_size;    /* prime, <= header maglev_max */
    uint32_t table_version;  /* bumped whenever this cluster's Maglev table is rebuilt */
    struct pydp_edge edges[16];
};                            /* 1088 bytes */

struct pydp_config {
    uint64_t generation;     /* the generation this slot was published as */
    uint32_t nb_clusters;    /* highest used cluster index + 1 */
    uint32_t hash_seed;      /* flow hash seed: the same on every load balancer of a cluster */
    uint32_t tcp_syn_timeout_ms;
    uint32_t tcp_est_timeout_ms;
    uint32_t tcp_fin_timeout_ms;
    uint32_t udp_timeout_ms;
    uint32_t other_timeout_ms;
    uint8_t  ipip_src4[4];   /* IP-in-IP outer source prefix (IPv4) ... */
    uint8_t  ipip_src4_bits; /* ... and its length: host bits come from the flow hash */
    uint8_t  ipip_src6_bits;
    uint8_t  gateway_mac[6]; /* next hop for IP-in-IP (edges on another subnet) */
    uint8_t  ipip_src6[16];
    uint8_t  pad0[16];
    uint8_t  vip_index[256]; /* open addressing on the cluster IP hash: cluster index + 1, 0 = empty */
    struct pydp_cluster clusters[64];
};

/* ---- flow tables (one per worker; written only by the owning worker) ---- */

struct pydp_flow_key {
    uint8_t  src[16];
    uint8_t  dst[16];
    uint16_t sport;
    uint16_t dport;
    uint8_t  proto;
    uint8_t  family;
    uint16_t pad0;           /* always zero, so keys compare as bytes */
};                            /* 40 bytes */

/* The cold record of a flow: the full key and what flow sync, `pydpctl flows` and flush read. The fast path writes
 * it when a flow opens, is re-pinned or changes state, and reads it only to confirm a key (see flow.c). */
struct pydp_flow {
    struct pydp_flow_key key;
    uint32_t hash;
    uint32_t created_ms;
    uint32_t packets;        /* packets counted so far; the bucket's pkts[way] are not yet in it */
    uint16_t cluster;
    uint16_t cluster_uid;
    uint16_t edge_uid;
    uint8_t  edge;           /* edge slot in the cluster */
    uint8_t  state;          /* enum pydp_flow_state */
    uint32_t sig;            /* the key's signature (pydp_flow_sig | 1, half-open bit clear) */
};                            /* 64 bytes */

/* A bucket: one hot line with everything an established hit reads and writes, then the cold records. */
struct pydp_flow_bucket {
    uint32_t sig[6];         /* line 0: 0 = empty way, else signature | 1, bit 1 = PYDP_FLOW_SIG_SYN (flow.c) */
    uint32_t last_ms[6];     /*   last packet of each way */
    uint8_t  pin[6];         /*   edge slot (bits 0-3) | enum pydp_flow_state << 4 | PYDP_FLOW_PIN_CHECK (bit 7) */
    uint8_t  pkts[6];        /*   packets not yet added to the record's packets (folded every PYDP_FLOW_PKTS_FOLD) */
    uint8_t  pad0[4];
    struct pydp_flow flows[6];     /* lines 1..6: the cold records */
};                            /* 448 bytes */

/* What a flow's pin depends on in a cluster slot: the flow table keeps the last one its worker saw (flow.c). */
struct pydp_flow_ident {
    uint16_t uid;
    uint8_t  family;
    uint8_t  pad0;
    uint8_t  vip[16];
    uint16_t edge_uid[16];
};                            /* 52 bytes */

struct pydp_flow_table {
    uint32_t nb_buckets;     /* power of two */
    uint32_t mask;
    uint64_t live;           /* occupied ways (expired ones not yet reclaimed included) */
    uint64_t expired;        /* expired flows reclaimed (on lookup or by an insert) */
    uint64_t evicted;        /* live flows pushed out of a full bucket */
    uint64_t false_matches;  /* signature hits whose key did not match when a change needed it confirmed */
    uint64_t pin_checks;     /* hits whose pin was confirmed against the record after a cluster slot changed */
    uint64_t pad0[10];
    /* a flow of cluster c last seen at or before pin_since[c] (ms) confirms its pin against its record before it
     * is forwarded on it: the slot's cluster, cluster IP or an edge changed then (pydp_flow_config) */
    uint32_t pin_since[64];
    struct pydp_flow_ident ident[64];   /* each cluster slot as the owning worker last saw it */
    uint8_t  pad1[64];
    /* struct pydp_flow_bucket buckets[nb_buckets] follows, 64-byte aligned */
};                            /* 3776 bytes */

/* ---- counters (per worker; written only by that worker) ---- */

struct pydp_port_stats {
    uint64_t rx_packets;
    uint64_t rx_bytes;
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t exc_to_kernel;      /* frames handed to the exception port */
    uint64_t exc_from_kernel;    /* frames from the exception port sent out of this port */
    uint64_t exc_arp;            /* of exc_to_kernel: ARP/ND class */
    uint64_t exc_carp;           /* of exc_to_kernel: CARP class */
    uint64_t exc_control;        /* of exc_to_kernel: control class (BGP, BFD) */
    uint64_t pad0[7];
    uint64_t drops[16];          /* enum pydp_drop */
};                                /* 256 bytes */

struct pydp_worker_stats {
    uint64_t polls;              /* poll-loop iterations */
    uint64_t idle_polls;         /* iterations that received nothing */
    uint64_t busy_cycles;        /* TSC cycles spent on iterations that received packets */
    uint64_t sleeps;             /* idle back-off sleeps */
    uint64_t flow_lookups;
    uint64_t flow_hits;
    uint64_t flow_inserts;
    uint64_t flow_evictions;     /* live flows pushed out of a full bucket */
    uint64_t flow_rehashed;      /* flows whose edge went down, moved to a new edge */
    uint64_t cls_tcp;
    uint64_t cls_udp;
    uint64_t cls_icmp;
    uint64_t cls_fragment;
    uint64_t cls_icmp_error;
    uint64_t cls_ipsec;
    uint64_t cls_ipv6;
    uint64_t cls_other;
    uint64_t config_swaps;       /* generations picked up */
    uint64_t cmds;               /* control commands executed */
    uint64_t flow_installs;      /* flows installed or refreshed by flow sync (PYDP_CMD_INSERT) */
    uint64_t flow_flushed;       /* flows cleared by flush commands (pydpctl flows flush, drain timeout) */
    uint64_t pad0[11];
    struct pydp_port_stats port[4];
};                                /* 256 + 1024 = 1280 bytes */

struct pydp_edge_stats {
    uint64_t packets;
    uint64_t bytes;
    uint64_t new_flows;
    uint64_t pad0;
};                                /* 32 bytes */

struct pydp_cluster_stats {
    struct pydp_edge_stats edges[16];
    uint64_t packets;            /* forwarded */
    uint64_t bytes;
    uint64_t drop_not_active;
    uint64_t drop_disabled;
    uint64_t drop_no_edge;
    uint64_t pad0[3];
};                                /* 576 bytes */

/* ---- control commands (control plane -> one worker; single producer, single consumer) ---- */

enum pydp_cmd_op {
    PYDP_CMD_NONE = 0,
    PYDP_CMD_FLUSH_ALL = 1,
    PYDP_CMD_FLUSH_CLUSTER = 2,  /* arg0 = cluster */
    PYDP_CMD_FLUSH_EDGE = 3,     /* arg0 = cluster, arg1 = edge slot */
    PYDP_CMD_INSERT = 4          /* flow = the flow to install (flow sync); arg0 = PYDP_INSTALL_* flags */
};

/* Flags of PYDP_CMD_INSERT (arg0). */
#define PYDP_INSTALL_UPDATE_ONLY 1   /* change the flow only if the table has it (an ended flow): never insert */

struct pydp_cmd {
    uint32_t op;
    uint32_t arg0;
    uint32_t arg1;
    uint32_t pad0;
    struct pydp_flow flow;
    uint64_t pad1[6];
};                                /* 128 bytes */

struct pydp_cmd_ring {
    uint32_t head;               /* written by the producer */
    uint32_t pad0[15];
    uint32_t tail;               /* written by the consumer */
    uint32_t pad1[15];
    struct pydp_cmd cmds[256];
};

/* ---- flow events (one worker -> the control plane; single producer, single consumer) ----
 * Written only while the header's flow_events flag is set (flow sync on): NEW when a worker pins a flow to an edge
 * (a new flow, or one re-hashed because its edge went away), END when a TCP flow sees its first FIN or RST. A full
 * ring drops the event and counts it; flow sync's periodic refresh and resync cover what was dropped. */

enum pydp_event_type {
    PYDP_EV_NONE = 0,
    PYDP_EV_NEW = 1,
    PYDP_EV_END = 2
};

struct pydp_flow_event {
    struct pydp_flow_key key;
    uint32_t hash;
    uint16_t cluster;
    uint16_t cluster_uid;
    uint16_t edge_uid;
    uint8_t  edge;
    uint8_t  type;           /* enum pydp_event_type */
    uint8_t  state;          /* enum pydp_flow_state after the packet */
    uint8_t  pad0[3];
    uint32_t time_ms;
    uint32_t pad1;
};                            /* 64 bytes */

struct pydp_event_ring {
    uint32_t head;               /* written by the producer (the worker) */
    uint32_t pad0;
    uint64_t written;            /* events put in the ring */
    uint64_t dropped;            /* events lost because the ring was full */
    uint64_t pad1[5];
    uint32_t tail;               /* written by the consumer (pydp-control) */
    uint32_t pad2[15];
    struct pydp_flow_event events[4096];
};

/* ---- the region ---- */

struct pydp_worker_state {
    uint64_t seen_gen;           /* generation in use at the last quiescent point; UINT64_MAX = offline */
    uint64_t heartbeat_ms;       /* last loop iteration */
    uint32_t lcore;
    uint32_t online;
    uint64_t pad0[5];
};                                /* 64 bytes */

struct pydp_port_info {
    char     name[32];           /* DPDK device name */
    char     exc_name[32];       /* exception device name, "" = none */
    uint8_t  mac[6];
    uint8_t  link_up;
    uint8_t  pad0;
    uint32_t link_speed_mbps;
    uint16_t port_id;
    uint16_t exc_port_id;        /* 65535 = none */
    uint32_t pad1[12];
};                                /* 128 bytes */

struct pydp_shm_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t nb_workers;
    uint32_t nb_ports;
    uint32_t maglev_max;         /* room per cluster table */
    uint32_t flow_capacity;      /* flows per worker (buckets x ways) */
    int32_t  dp_pid;             /* the data plane process */
    uint32_t pad0;
    uint64_t created_ms;
    uint64_t heartbeat_ms;       /* data plane main thread, every ~100 ms */
    uint64_t off_config[2];
    uint64_t off_maglev[2];      /* [cluster][maglev_max] uint8_t edge slots */
    uint64_t off_worker_stats;   /* [worker] struct pydp_worker_stats */
    uint64_t off_cluster_stats;  /* [worker][cluster] struct pydp_cluster_stats */
    uint64_t off_flows;          /* [worker] flow table, flow_table_stride bytes each */
    uint64_t flow_table_stride;
    uint64_t off_cmds;           /* [worker] struct pydp_cmd_ring */
    uint64_t off_events;         /* [worker] struct pydp_event_ring */
    uint32_t flow_events;        /* 1 = workers write flow events (flow sync on), set by the control plane */
    uint32_t pad3;
    uint64_t pad1[5];
    /* cache line: published generation */
    uint64_t generation;         /* the slot in use is generation & 1 */
    uint64_t pad2[7];
    /* cache line: what the data plane tells its controller */
    uint64_t reload_requests;    /* bumped by a managed data plane on SIGHUP: pydp-control re-applies the store */
    uint32_t managed;            /* 1 = started with --managed: its clusters come from pydp-control only */
    uint32_t pad4;
    uint64_t pad5[6];
    struct pydp_worker_state workers[16];
    struct pydp_port_info ports[4];
};

struct pydp_shm {
    void    *base;
    uint64_t size;
    int      fd;
    int      owner;              /* created (and unlinked at close) by this handle */
    struct pydp_shm_header *hdr;
    char     path[256];
};

struct pydp_shm_params {
    uint32_t nb_workers;
    uint32_t nb_ports;
    uint32_t maglev_max;
    uint32_t flow_capacity;      /* rounded up to a power of two */
};

/* shared memory (shm.c); errors are written to err (PYDP_ERR_LEN bytes) */
/* the bytes of a region with these parameters (before a hugetlbfs mount rounds them up to whole pages) */
uint64_t pydp_shm_bytes(const struct pydp_shm_params *p);
int pydp_shm_create(struct pydp_shm *shm, const char *path, const struct pydp_shm_params *p, char *err);
int pydp_shm_attach(struct pydp_shm *shm, const char *path, char *err);
void pydp_shm_close(struct pydp_shm *shm);
struct pydp_config *pydp_shm_config(struct pydp_shm *shm, uint32_t slot);
uint8_t *pydp_shm_maglev(struct pydp_shm *shm, uint32_t slot, uint32_t cluster);
struct pydp_flow_table *pydp_shm_flows(struct pydp_shm *shm, uint32_t worker);
struct pydp_worker_stats *pydp_shm_worker_stats(struct pydp_shm *shm, uint32_t worker);
struct pydp_cluster_stats *pydp_shm_cluster_stats(struct pydp_shm *shm, uint32_t worker, uint32_t cluster);
struct pydp_cmd_ring *pydp_shm_cmds(struct pydp_shm *shm, uint32_t worker);
struct pydp_event_ring *pydp_shm_events(struct pydp_shm *shm, uint32_t worker);

/* config swap (one writer at a time; see DESIGN.md): begin returns the idle slot holding a copy of the current
 * config, once every online worker has left the slot; NULL on timeout. publish makes it current. */
struct pydp_config *pydp_config_begin(struct pydp_shm *shm, uint32_t timeout_ms, char *err);
int pydp_config_rebuild(struct pydp_shm *shm, struct pydp_config *slot, uint32_t cluster, char *err);
int pydp_config_publish(struct pydp_shm *shm, struct pydp_config *slot, char *err);
void pydp_config_defaults(struct pydp_config *cfg);
int pydp_config_lookup_vip(const struct pydp_config *cfg, uint8_t family, const uint8_t *addr);
int pydp_cmd_push(struct pydp_shm *shm, uint32_t worker, const struct pydp_cmd *cmd);

/* Maglev (maglev.c): table[i] = index into names of the edge for slot i, PYDP_MAGLEV_NONE if no edge has weight.
 * A weight of 0 leaves that edge out. size must be prime. Returns 0, or -1 with err set. */
int pydp_maglev_build(const char *const *names, const uint16_t *weights, uint32_t n, uint32_t size,
                      uint8_t *table, char *err);
/* The same table with labels[i] written for edge i instead of i (the data plane's edge slots), in the same pass. */
int pydp_maglev_build_labels(const char *const *names, const uint16_t *weights, const uint8_t *labels, uint32_t n,
                             uint32_t size, uint8_t *table, char *err);
int pydp_is_prime(uint32_t n);
uint64_t pydp_hash_name(const char *name, uint64_t seed);

/* flow hash shared by Maglev lookup and the flow table (hash.c); the signature is a second, independent hash of
 * the key that tells the ways of a bucket apart */
uint32_t pydp_flow_hash(const struct pydp_flow_key *key, uint32_t seed);
uint32_t pydp_flow_sig(const struct pydp_flow_key *key);
uint32_t pydp_maglev_slot(uint32_t hash, uint32_t size);

/* parser (parse.c) */
struct pydp_pkt_info {
    struct pydp_flow_key key;    /* the flow: client -> cluster IP */
    uint8_t  dst[16];            /* outer destination (the cluster IP candidate) */
    uint16_t l3_off;             /* offset of the IP header in the frame */
    uint16_t l3_len;             /* IP total length (IPv6: header + payload) */
    uint16_t ethertype;
    uint8_t  klass;              /* enum pydp_class */
    uint8_t  flags;              /* PYDP_PF_* */
    uint8_t  tcp_flags;          /* of the packet itself (not of an embedded header) */
    uint8_t  l4_proto;           /* outer L4 protocol after extension headers */
    uint8_t  family;
    uint8_t  ttl;                /* IPv4 TTL / IPv6 hop limit of the outer header (0 if not IP) */
};
int pydp_parse(const uint8_t *frame, uint32_t len, struct pydp_pkt_info *info);
/* The exception-path class (enum pydp_exc_class) of a frame parsed by pydp_parse that goes to the kernel. */
int pydp_exc_class(const struct pydp_pkt_info *info);

/* flow table (flow.c); the table memory is caller-provided */
uint64_t pydp_flow_table_bytes(uint32_t capacity);
void pydp_flow_table_init(struct pydp_flow_table *t, uint32_t capacity);
struct pydp_flow *pydp_flow_lookup(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash,
                                   uint32_t now_ms, const struct pydp_config *cfg);
struct pydp_flow *pydp_flow_insert(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash,
                                   uint32_t now_ms, const struct pydp_config *cfg, int *evicted);
/* the fast path's insert: a new flow written whole (key, pin, the state from its first packet, one packet) in one
 * pass, sig = pydp_flow_sig(key); the record is written with non-temporal stores, so the writer calls
 * pydp_flow_fence() before other processes may rely on the records (the worker: once per burst) */
struct pydp_flow *pydp_flow_open(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash,
                                 uint32_t sig, uint32_t now_ms, const struct pydp_config *cfg, uint16_t cluster,
                                 uint16_t cluster_uid, uint8_t edge, uint16_t edge_uid, uint8_t tcp_flags,
                                 int *evicted);
void pydp_flow_fence(void);
/* the fast path's lookup and hit by position (bucket, way), decided on the signature alone (sig =
 * pydp_flow_sig(key)): pydp_flow_find returns the way (or -1) and sets *bucket; pydp_flow_hit_at takes the
 * packet's key and reads the cold record only to confirm it before a state change: it returns 0, 1 when the state
 * changed, -1 when the key did not match (a false signature match: the flow is left alone) */
int pydp_flow_find(struct pydp_flow_table *t, uint32_t hash, uint32_t sig, uint32_t now_ms,
                   const struct pydp_config *cfg, struct pydp_flow_bucket **bucket);
int pydp_flow_hit_at(struct pydp_flow_table *t, struct pydp_flow_bucket *b, unsigned w,
                     const struct pydp_flow_key *key, uint8_t tcp_flags, uint32_t now_ms);
int pydp_flow_confirm(const struct pydp_flow *f, const struct pydp_flow_key *key);
/* the edge slot and state of way w of b, as a hit reads them (line 0) */
uint8_t pydp_flow_edge_at(const struct pydp_flow_bucket *b, unsigned w);
uint8_t pydp_flow_state_at(const struct pydp_flow_bucket *b, unsigned w);
/* the edge slot and state of a flow's way (the control plane's and tests' form) */
uint8_t pydp_flow_edge(const struct pydp_flow_table *t, const struct pydp_flow *f);
uint8_t pydp_flow_state(const struct pydp_flow_table *t, const struct pydp_flow *f);
/* Is the pin of way w of b (a flow of cluster `cluster`) known to be current without reading its record: not
 * marked PYDP_FLOW_PIN_CHECK and last seen after the last change of the cluster's slot (pin_since)? */
int pydp_flow_pin_current(const struct pydp_flow_table *t, const struct pydp_flow_bucket *b, unsigned w,
                          uint16_t cluster);
/* the caller found the record's pin (cluster, uids) current: clears the mark, counts a pin check */
void pydp_flow_pin_confirmed(struct pydp_flow_table *t, struct pydp_flow_bucket *b, unsigned w);
/* The owning worker starts using cfg: every cluster slot whose identity (uid, family, cluster IP, edge uids)
 * differs from what the table last saw gets pin_since = now_ms. */
void pydp_flow_config(struct pydp_flow_table *t, const struct pydp_config *cfg, uint32_t now_ms);
/* Keeps pin_since within 2^30 ms of now (cluster now_ms % 64 per call; the worker calls it once a millisecond),
 * so an old change never looks like a future one when the clock wraps. */
void pydp_flow_tick(struct pydp_flow_table *t, uint32_t now_ms);
/* pins a flow to an edge: the hot line and the cold record */
void pydp_flow_pin(struct pydp_flow_table *t, struct pydp_flow *f, uint16_t cluster, uint16_t cluster_uid,
                   uint8_t edge, uint16_t edge_uid);
/* pipelined lookups over a burst: prefetch every bucket's hot line, then the cold record of a packet that will
 * read it (a TCP state change confirms the key) */
void pydp_flow_prefetch_bucket(const struct pydp_flow_table *t, uint32_t hash);
void pydp_flow_prefetch_record(const struct pydp_flow_table *t, uint32_t hash, uint32_t sig, uint8_t proto,
                               uint8_t tcp_flags);
/* a packet of an existing flow (the control plane's and tests' form): the state from the packet, the time, the
 * packet count, with the key's protocol read from the flow */
void pydp_flow_touch(struct pydp_flow_table *t, struct pydp_flow *f, uint8_t tcp_flags, uint32_t now_ms);
uint32_t pydp_flow_packets(const struct pydp_flow_table *t, const struct pydp_flow *f);
uint32_t pydp_flow_timeout(const struct pydp_config *cfg, uint8_t state);
uint32_t pydp_flow_last_ms(const struct pydp_flow_table *t, const struct pydp_flow *f);
uint64_t pydp_flow_flush(struct pydp_flow_table *t, int cluster, int edge);
uint64_t pydp_flow_count(const struct pydp_flow_table *t, uint32_t now_ms, const struct pydp_config *cfg);
/* flow sync (flow.c): install a flow received from the peer (PYDP_CMD_INSERT). The hash is recomputed with this
 * appliance's seed; the flow's last-packet time becomes now (a refresh keeps it alive). Returns the flow, or NULL
 * when flags has PYDP_INSTALL_UPDATE_ONLY and the table does not hold the key, or the flow is invalid. */
struct pydp_flow *pydp_flow_install(struct pydp_flow_table *t, const struct pydp_flow *in, uint32_t flags,
                                    uint32_t now_ms, const struct pydp_config *cfg, int *evicted);
/* the flow-event ring: push (the worker; 0, or -1 when full and counted) and pop (the consumer; events copied) */
int pydp_event_push(struct pydp_event_ring *r, uint8_t type, const struct pydp_flow *f, uint32_t now_ms);
uint32_t pydp_event_pop(struct pydp_event_ring *r, struct pydp_flow_event *out, uint32_t max);

/* DSR rewrite (dsr.c). l2 rewrites the Ethernet addresses in place. encap writes a new Ethernet header and an outer
 * IPv4 (20 bytes) or IPv6 (40 bytes) header at out, where out = the frame start moved back by that many bytes;
 * the inner IP packet stays where it was (at out + 14 + outer length). Returns the outer length or -1. */
void pydp_dsr_l2(uint8_t *frame, const uint8_t *dst_mac, const uint8_t *src_mac);
int pydp_dsr_encap(uint8_t *out, uint8_t family, const uint8_t *outer_src, const uint8_t *outer_dst,
                   uint16_t inner_len, const uint8_t *dst_mac, const uint8_t *src_mac);
void pydp_ipip_source(const struct pydp_config *cfg, uint8_t family, uint32_t hash, uint8_t *out);

/* the data plane (dataplane.c) */
struct pydp_dp_params {
    const char *shm_path;
    uint32_t nb_workers;
    uint32_t nb_ports;
    const char *port_names[4];   /* DPDK device names (as given to --vdev / -a) */
    const char *exc_names[4];    /* exception device per port, NULL = none */
    uint32_t flow_capacity;
    uint32_t maglev_max;
    uint32_t rx_desc;
    uint32_t tx_desc;
    uint32_t nb_mbufs;
    uint32_t burst;
    uint32_t busy_poll;          /* 1 = never sleep when idle */
    uint32_t idle_sleep_max_us;  /* back-off ceiling */
    uint32_t idle_sleep_deep_us; /* the ceiling after PYDP_IDLE_DEEP_AFTER_MS without a packet (<= max: none) */
    uint32_t tx_drain_us;
    uint32_t exc_pps;            /* exception path, bulk class, per worker */
    uint32_t exc_prio_pps;       /* exception path, ARP/ND class, per worker */
    uint32_t exc_carp_pps;       /* exception path, CARP class, per worker */
    uint32_t exc_control_pps;    /* exception path, control class (BGP, BFD), per worker */
    uint32_t promiscuous;
    uint32_t pcap_mode;          /* run to completion on the calling thread, stop when the input is drained */
};

int pydp_eal_init(int argc, char **argv);
const char *pydp_last_error(void);
struct pydp_shm *pydp_dp_setup(const struct pydp_dp_params *p);
int pydp_dp_launch(void);
int pydp_dp_run_pcap(uint32_t idle_polls);
void pydp_dp_stop(void);
int pydp_dp_wait(void);
int pydp_dp_poll(void);
void pydp_dp_teardown(void);
uint64_t pydp_now_ms(void);

/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYDP_H */
