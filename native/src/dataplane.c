/*
 * dataplane.c - EAL start, the mbuf pool, ports, shared memory and workers: the life cycle the Python launcher
 * drives through cffi (setup, launch or run to completion, poll, stop, wait, teardown).
 */
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_malloc.h>

#include "dp.h"

struct dp_main dp;
static char dp_error[PYDP_ERR_LEN];

void dp_set_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(dp_error, sizeof(dp_error), fmt, ap);
    va_end(ap);
}

const char *pydp_last_error(void)
{
    return dp_error;
}

int pydp_eal_init(int argc, char **argv)
{
    int ret;

    if (dp.eal_ready) {
        dp_set_error("EAL already initialised in this process");
        return -1;
    }
    ret = rte_eal_init(argc, argv);
    if (ret < 0) {
        dp_set_error("EAL initialisation failed: %s (see the EAL messages above)", rte_strerror(rte_errno));
        return -1;
    }
    dp.eal_ready = 1;
    return ret;
}

static int dp_find_port(const char *name, uint16_t *id)
{
    if (rte_eth_dev_get_port_by_name(name, id) == 0)
        return 0;
    dp_set_error("no DPDK port named '%s' (is the device given to EAL with --vdev or -a, and its driver "
                 "available?)", name);
    return -1;
}

static int dp_check_params(const struct pydp_dp_params *p)
{
    if (p->nb_workers < 1 || p->nb_workers > PYDP_MAX_WORKERS) {
        dp_set_error("workers must be 1..%d, got %u", PYDP_MAX_WORKERS, p->nb_workers);
        return -1;
    }
    if (p->nb_ports < 1 || p->nb_ports > PYDP_MAX_PORTS) {
        dp_set_error("ports must be 1..%d, got %u", PYDP_MAX_PORTS, p->nb_ports);
        return -1;
    }
    if (p->burst < 1 || p->burst > DP_MAX_BURST) {
        dp_set_error("burst must be 1..%d, got %u", DP_MAX_BURST, p->burst);
        return -1;
    }
    if (!p->pcap_mode && rte_lcore_count() != p->nb_workers + 1) {
        dp_set_error("%u workers need %u lcores (one main + one per worker); EAL has %u", p->nb_workers,
                     p->nb_workers + 1, rte_lcore_count());
        return -1;
    }
    if (p->pcap_mode && p->nb_workers != 1) {
        dp_set_error("pcap mode runs one worker, got %u", p->nb_workers);
        return -1;
    }
    return 0;
}

static void dp_txq_init(struct dp_txq *q, uint16_t port, uint16_t queue, struct pydp_port_stats *stats, int exc)
{
    q->port = port;
    q->queue = queue;
    q->len = 0;
    q->stats = stats;
    q->is_exc = exc;
}

static int dp_workers_init(void)
{
    struct pydp_shm_header *h = dp.shm.hdr;
    uint32_t wi, pi, lcore;

    lcore = rte_get_next_lcore(-1, 1, 0);
    for (wi = 0; wi < dp.p.nb_workers; wi++) {
        struct dp_worker *w = rte_zmalloc("pydp_worker", sizeof(*w), RTE_CACHE_LINE_SIZE);

        if (w == NULL) {
            dp_set_error("out of memory for worker %u", wi);
            return -1;
        }
        dp.workers[wi] = w;
        w->id = wi;
        w->lcore = dp.p.pcap_mode ? rte_get_main_lcore() : lcore;
        if (!dp.p.pcap_mode)
            lcore = rte_get_next_lcore(lcore, 1, 0);
        w->stats = pydp_shm_worker_stats(&dp.shm, wi);
        w->cstats = pydp_shm_cluster_stats(&dp.shm, wi, 0);
        w->flows = pydp_shm_flows(&dp.shm, wi);
        w->cmds = pydp_shm_cmds(&dp.shm, wi);
        w->events = pydp_shm_events(&dp.shm, wi);
        w->state = &h->workers[wi];
        w->drain_tsc = dp.tsc_hz / 1000000 * (dp.p.tx_drain_us ? dp.p.tx_drain_us : 100);
        dp_bucket_init(&w->exc_bucket[PYDP_EXC_BULK], dp.p.exc_pps ? dp.p.exc_pps : 1, dp.tsc_hz);
        dp_bucket_init(&w->exc_bucket[PYDP_EXC_ARP], dp.p.exc_prio_pps ? dp.p.exc_prio_pps : 1, dp.tsc_hz);
        dp_bucket_init(&w->exc_bucket[PYDP_EXC_CARP], dp.p.exc_carp_pps ? dp.p.exc_carp_pps : 1, dp.tsc_hz);
        dp_bucket_init(&w->exc_bucket[PYDP_EXC_CONTROL], dp.p.exc_control_pps ? dp.p.exc_control_pps : 1,
                       dp.tsc_hz);
        for (pi = 0; pi < dp.p.nb_ports; pi++) {
            dp_txq_init(&w->tx[pi], dp.ports[pi].port_id, (uint16_t)wi, &w->stats->port[pi], 0);
            dp_txq_init(&w->exc_tx[pi], dp.ports[pi].exc_id, (uint16_t)wi, &w->stats->port[pi], 1);
        }
    }
    return 0;
}

struct pydp_shm *pydp_dp_setup(const struct pydp_dp_params *p)
{
    struct pydp_shm_params sp;
    char err[PYDP_ERR_LEN];
    uint32_t pi;

    if (!dp.eal_ready) {
        dp_set_error("EAL is not initialised");
        return NULL;
    }
    dp.p = *p;
    if (dp_check_params(p) != 0)
        return NULL;
    dp.tsc_hz = rte_get_tsc_hz();
    dp.tsc_per_ms = dp.tsc_hz / 1000 ? dp.tsc_hz / 1000 : 1;
    dp.base_ms = pydp_now_ms();
    dp.base_tsc = rte_rdtsc();

    for (pi = 0; pi < p->nb_ports; pi++) {
        struct dp_port *port = &dp.ports[pi];

        if (dp_find_port(p->port_names[pi], &port->port_id) != 0)
            return NULL;
        port->exc_id = DP_NO_PORT;
        if (p->exc_names[pi] != NULL && p->exc_names[pi][0] != '\0' &&
            dp_find_port(p->exc_names[pi], &port->exc_id) != 0)
            return NULL;
    }
    dp.pool = rte_pktmbuf_pool_create("pydp_mbufs", p->nb_mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                      (int)rte_socket_id());
    if (dp.pool == NULL) {
        dp_set_error("cannot create a pool of %u mbufs: %s (too little hugepage memory? raise memory_mb or "
                     "lower mbufs)", p->nb_mbufs, rte_strerror(rte_errno));
        return NULL;
    }
    for (pi = 0; pi < p->nb_ports; pi++) {
        struct dp_port *port = &dp.ports[pi];

        if (dp_port_init(port->port_id, (uint16_t)p->nb_workers, (uint16_t)p->nb_workers, (int)p->promiscuous))
            return NULL;
        rte_eth_macaddr_get(port->port_id, &port->mac);
        if (port->exc_id != DP_NO_PORT) {
            /* TAP wants as many RX as TX queues; worker 0 polls all of them (dp_exc_poll) */
            if (dp_port_init(port->exc_id, (uint16_t)p->nb_workers, (uint16_t)p->nb_workers, 1) != 0)
                return NULL;
            /* the kernel side answers ARP/ND with the data port's address */
            rte_eth_dev_default_mac_addr_set(port->exc_id, &port->mac);
        }
        dp.ports_started = (int)pi + 1;
    }

    memset(&sp, 0, sizeof(sp));
    sp.nb_workers = p->nb_workers;
    sp.nb_ports = p->nb_ports;
    sp.maglev_max = p->maglev_max;
    sp.flow_capacity = p->flow_capacity;
    if (pydp_shm_create(&dp.shm, p->shm_path, &sp, err) != 0) {
        dp_set_error("%s", err);
        return NULL;
    }
    for (pi = 0; pi < p->nb_ports; pi++) {
        struct pydp_port_info *info = &dp.shm.hdr->ports[pi];

        snprintf(info->name, sizeof(info->name), "%s", p->port_names[pi]);
        snprintf(info->exc_name, sizeof(info->exc_name), "%s", p->exc_names[pi] ? p->exc_names[pi] : "");
        memcpy(info->mac, dp.ports[pi].mac.addr_bytes, 6);
        info->port_id = dp.ports[pi].port_id;
        info->exc_port_id = dp.ports[pi].exc_id;
    }
    if (dp_workers_init() != 0)
        return NULL;
    pydp_dp_poll();
    return &dp.shm;
}

int pydp_dp_launch(void)
{
    uint32_t wi;

    dp.quit = 0;
    for (wi = 0; wi < dp.p.nb_workers; wi++) {
        int ret = rte_eal_remote_launch(dp_worker_main, dp.workers[wi], dp.workers[wi]->lcore);

        if (ret != 0) {
            dp.quit = 1;
            rte_eal_mp_wait_lcore();
            dp_set_error("cannot launch worker %u on lcore %u: %s", wi, dp.workers[wi]->lcore,
                         rte_strerror(-ret));
            return -1;
        }
    }
    dp.launched = 1;
    return 0;
}

int pydp_dp_run_pcap(uint32_t idle_polls)
{
    dp.quit = 0;
    return dp_worker_loop(dp.workers[0], idle_polls ? idle_polls : 1);
}

void pydp_dp_stop(void)
{
    dp.quit = 1;
}

int pydp_dp_wait(void)
{
    if (dp.launched)
        rte_eal_mp_wait_lcore();
    dp.launched = 0;
    return 0;
}

/* The link of a port backed by a kernel interface (net_af_packet, net_af_xdp): those PMDs report the link up from
 * the start whatever the interface does, so the kernel's IFF_RUNNING decides (a veth whose peer or itself is down,
 * a cable pulled). Ports of other drivers keep what rte_eth_link_get_nowait says. */
static int dp_kernel_link(uint16_t port_id, int pmd_up)
{
    struct rte_eth_dev_info info;
    struct ifreq ifr;
    int fd, up;

    if (rte_eth_dev_info_get(port_id, &info) != 0 || info.if_index == 0 || info.driver_name == NULL ||
        (strcmp(info.driver_name, "net_af_packet") != 0 && strcmp(info.driver_name, "net_af_xdp") != 0))
        return pmd_up;
    memset(&ifr, 0, sizeof(ifr));
    if (if_indextoname(info.if_index, ifr.ifr_name) == NULL)
        return 0;                   /* the interface is gone */
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return pmd_up;
    up = ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 ? (ifr.ifr_flags & IFF_UP) && (ifr.ifr_flags & IFF_RUNNING) : pmd_up;
    close(fd);
    return up && pmd_up;
}

/* Called by the launcher's main loop (~every 100 ms): link state and the data plane's heartbeat. */
int pydp_dp_poll(void)
{
    uint32_t pi;
    int up = 0;

    if (dp.shm.hdr == NULL)
        return -1;
    for (pi = 0; pi < dp.p.nb_ports; pi++) {
        struct rte_eth_link link;

        memset(&link, 0, sizeof(link));
        if (rte_eth_link_get_nowait(dp.ports[pi].port_id, &link) == 0) {
            int link_up = dp_kernel_link(dp.ports[pi].port_id, link.link_status ? 1 : 0);

            dp.shm.hdr->ports[pi].link_up = (uint8_t)link_up;
            dp.shm.hdr->ports[pi].link_speed_mbps = link.link_speed;
            up += link_up;
        }
    }
    __atomic_store_n(&dp.shm.hdr->heartbeat_ms, pydp_now_ms(), __ATOMIC_RELEASE);
    return up;
}

void pydp_dp_teardown(void)
{
    uint32_t wi;
    int pi;

    dp.quit = 1;
    pydp_dp_wait();
    for (pi = 0; pi < dp.ports_started; pi++) {
        dp_port_close(dp.ports[pi].port_id);
        if (dp.ports[pi].exc_id != DP_NO_PORT)
            dp_port_close(dp.ports[pi].exc_id);
    }
    dp.ports_started = 0;
    for (wi = 0; wi < PYDP_MAX_WORKERS; wi++) {
        rte_free(dp.workers[wi]);
        dp.workers[wi] = NULL;
    }
    if (dp.shm.base != NULL)
        pydp_shm_close(&dp.shm);
    if (dp.pool != NULL)
        rte_mempool_free(dp.pool);
    dp.pool = NULL;
    if (dp.eal_ready)
        rte_eal_cleanup();
    dp.eal_ready = 0;
}
