/*
 * l3fwd_memif.h - force-included (cc -include) when perf/run builds DPDK's l3fwd example from the installed
 * sources (dpdk-doc): l3fwd asks every port for IPv4/UDP/TCP receive checksum offload, which net_memif does not
 * have, so rte_eth_dev_configure() refuses the port. With the offload request defined as none, l3fwd runs on the
 * memif pair unchanged otherwise (it checks IPv4 headers in software: DO_RFC_1812_CHECKS).
 */
#include <rte_ethdev.h>
#undef RTE_ETH_RX_OFFLOAD_CHECKSUM
#define RTE_ETH_RX_OFFLOAD_CHECKSUM 0
