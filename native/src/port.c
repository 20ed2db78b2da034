/* port.c - port setup: one fixed sequence, a clear message at each step that can fail. */
#include <string.h>

#include <rte_ethdev.h>
#include <rte_errno.h>

#include "dp.h"

int dp_port_init(uint16_t port_id, uint16_t nb_rxq, uint16_t nb_txq, int promiscuous)
{
    struct rte_eth_conf conf;
    struct rte_eth_dev_info info;
    struct rte_eth_txconf txconf;
    char name[RTE_ETH_NAME_MAX_LEN] = "?";
    uint16_t rxd = (uint16_t)dp.p.rx_desc, txd = (uint16_t)dp.p.tx_desc;
    uint16_t q;
    int ret;

    rte_eth_dev_get_name_by_port(port_id, name);
    ret = rte_eth_dev_info_get(port_id, &info);
    if (ret != 0) {
        dp_set_error("port %s: cannot read device info: %s", name, rte_strerror(-ret));
        return -1;
    }
    if (nb_rxq > info.max_rx_queues || nb_txq > info.max_tx_queues) {
        dp_set_error("port %s (%s): needs %u RX and %u TX queues, the device has %u and %u "
                     "(for af_packet, set qpairs=; for pcap, give one rx_pcap/tx_pcap per queue)",
                     name, info.driver_name, nb_rxq, nb_txq, info.max_rx_queues, info.max_tx_queues);
        return -1;
    }
    memset(&conf, 0, sizeof(conf));
    if (nb_rxq > 1 && info.flow_type_rss_offloads != 0) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf =
            (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) & info.flow_type_rss_offloads;
    }
    if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)
        conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
    ret = rte_eth_dev_configure(port_id, nb_rxq, nb_txq, &conf);
    if (ret != 0) {
        dp_set_error("port %s (%s): configure with %u RX / %u TX queues failed: %s", name, info.driver_name,
                     nb_rxq, nb_txq, rte_strerror(-ret));
        return -1;
    }
    ret = rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &rxd, &txd);
    if (ret != 0) {
        dp_set_error("port %s: descriptor counts rejected: %s", name, rte_strerror(-ret));
        return -1;
    }
    for (q = 0; q < nb_rxq; q++) {
        ret = rte_eth_rx_queue_setup(port_id, q, rxd, rte_eth_dev_socket_id(port_id), NULL, dp.pool);
        if (ret != 0) {
            dp_set_error("port %s: RX queue %u setup failed: %s", name, q, rte_strerror(-ret));
            return -1;
        }
    }
    txconf = info.default_txconf;
    txconf.offloads = conf.txmode.offloads;
    for (q = 0; q < nb_txq; q++) {
        ret = rte_eth_tx_queue_setup(port_id, q, txd, rte_eth_dev_socket_id(port_id), &txconf);
        if (ret != 0) {
            dp_set_error("port %s: TX queue %u setup failed: %s", name, q, rte_strerror(-ret));
            return -1;
        }
    }
    ret = rte_eth_dev_start(port_id);
    if (ret != 0) {
        dp_set_error("port %s: start failed: %s", name, rte_strerror(-ret));
        return -1;
    }
    /* promiscuous and all-multicast are best effort: some drivers (pcap, null) do not have them */
    if (promiscuous)
        rte_eth_promiscuous_enable(port_id);
    else
        rte_eth_promiscuous_disable(port_id);
    rte_eth_allmulticast_enable(port_id);
    return 0;
}

void dp_port_close(uint16_t port_id)
{
    rte_eth_dev_stop(port_id);
    rte_eth_dev_close(port_id);
}
