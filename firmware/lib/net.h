/* net.h — minimal IPv4 over the virtio-net driver (lib/net.c): Ethernet,
 * ARP (requests, replies, answers for our address), IPv4 with header
 * checksum, ICMP echo, UDP with checksum. Addresses in host byte order. */
#ifndef FW_NET_H
#define FW_NET_H

#include "virtio.h"

#define ETH_HLEN 14
#define ETH_P_IP  0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define UDP_HLEN 8
#define ICMP_HLEN 8
#define IPPROTO_ICMP 1
#define IPPROTO_UDP 17
#define IPPROTO_TCP 6
#define TCP_HLEN 20
#define TCP_MSS 1448   /* gso_size of TSO frames (a Linux guest's MSS with timestamps) */

struct net {
  struct vnet *nic;
  uint8_t mac[6];
  uint32_t ip, host, mask;
  uint8_t host_mac[6];
  bool host_mac_ok;
  bool answer;            /* answer ICMP echo requests (ARP requests for us: always) */
  bool held;              /* net_next handed out an RX buffer not yet returned */
  uint16_t ip_id;
  uint32_t arp_answered, icmp_answered, ignored, bad_csum;
};

/* An IPv4 packet for us that net_handle did not consume. */
struct net_pkt {
  const uint8_t *eth;
  uint32_t eth_len;
  uint8_t proto;
  uint32_t src, dst;
  const uint8_t *l4;      /* after the IP header */
  uint32_t l4_len;
};

static inline uint16_t ntohs(uint16_t v) { return (uint16_t)(v << 8 | v >> 8); }
static inline uint16_t htons(uint16_t v) { return ntohs(v); }
static inline uint32_t get_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }

/* Arguments ip= host= mask= mac= (defaults 10.0.2.15, 10.0.2.2, 24, the
 * device's MAC, else 52:54:00:12:34:56), answer=0|1. False with *why = key. */
bool net_init(struct net *s, struct vnet *nic, const char **why);
bool net_parse_ip(const char *str, uint32_t *ip);
/* Sums 16-bit big-endian words (ones' complement, not folded). */
uint32_t net_sum(const void *p, uint32_t len, uint32_t sum);
uint16_t net_fold(uint32_t sum);

/* Handles one received frame: answers ARP requests for our address (and
 * learns the host's MAC from any ARP packet from it), answers ICMP echo
 * requests with answer=1. Returns true and fills p for any other IPv4
 * packet addressed to us with a valid header checksum. */
bool net_handle(struct net *s, const uint8_t *frame, uint32_t len, struct net_pkt *p);
/* Receives until a packet for the caller arrives (true; its buffer is held
 * until the next call or net_release) or rdtsc() >= deadline (false). */
bool net_next(struct net *s, struct net_pkt *p, uint64_t deadline);
void net_release(struct net *s);

bool net_send_arp(struct net *s, uint16_t op, const uint8_t *tha, uint32_t tpa);
/* Resolves the host's MAC (requests every 250 ms until deadline). */
bool net_resolve_host(struct net *s, uint64_t deadline);
bool net_send_icmp(struct net *s, uint8_t type, uint16_t id, uint16_t seq, const void *data, uint32_t len);
bool net_send_udp(struct net *s, uint16_t sport, uint16_t dport, const void *data, uint32_t len);
/* Builds Ethernet + IPv4 + UDP headers (checksum over the data given) at
 * frame; returns the frame length. For callers that fill TX buffers themselves. */
uint32_t net_build_udp(struct net *s, uint8_t *frame, uint16_t sport, uint16_t dport, const void *data, uint32_t len);
/* Builds Ethernet + IPv4 + TCP (ACK|PSH, no options) headers for len bytes of
 * data already in place after them, and the virtio-net header h (written
 * first, 12 bytes, num_buffers 0; h may be frame - 10 with a 10-byte
 * header) for a device that negotiated CSUM + HOST_TSO4:
 * NEEDS_CSUM with the pseudo-header sum in the checksum field, and GSO TCPV4
 * with gso_size TCP_MSS when len exceeds it. Returns the frame length. */
uint32_t net_build_tcp_tso(struct net *s, uint8_t *frame, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t len,
                           struct virtio_net_hdr *h);
/* Parses the driver options (unless o is given), brings the device up and
 * net_init()s s (if not NULL); prints `<name>: FAIL device: …` or `<name>:
 * bad argument …` and returns the exit code on failure, else 0. With info=1
 * prints a `<name>: device …` line (transport, features, queue sizes). */
int net_bring_up(const char *name, struct vnet *nic, struct net *s, struct vnet_opts *o);
void net_format_mac(char *out, const uint8_t *mac);   /* 18 bytes */
void net_format_ip(char *out, uint32_t ip);           /* 16 bytes */

#endif
