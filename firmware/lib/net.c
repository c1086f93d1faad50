/* Minimal IPv4: Ethernet, ARP, IPv4, ICMP echo, UDP. Frames are built in
 * place in a TX slot (no intermediate copy). */
#include "net.h"

static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

bool net_parse_ip(const char *str, uint32_t *ip)
{
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    uint64_t part;
    const char *end;
    if (!fw_parse_u64(str, &part, &end) || part > 255 || (i < 3 && *end != '.') || (i == 3 && *end))
      return false;
    v = v << 8 | (uint32_t)part;
    str = end + 1;
  }
  *ip = v;
  return true;
}

static bool parse_mac(const char *str, uint8_t *mac)
{
  for (int i = 0; i < 6; i++) {
    unsigned v = 0;
    for (int j = 0; j < 2; j++, str++) {
      char c = *str;
      unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                 : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
      if (d > 15)
        return false;
      v = v << 4 | d;
    }
    mac[i] = (uint8_t)v;
    if (i < 5 && *str++ != ':')
      return false;
  }
  return *str == '\0';
}

void net_format_mac(char *out, const uint8_t *m)
{
  snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

void net_format_ip(char *out, uint32_t ip)
{
  snprintf(out, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff);
}

bool net_init(struct net *s, struct vnet *nic, const char **why)
{
  static const uint8_t qemu_mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
  memset(s, 0, sizeof *s);
  s->nic = nic;
  uint64_t mask = fw_arg_u64("mask", 24);
  if (!net_parse_ip(fw_arg_str("ip", "10.0.2.15"), &s->ip)) { *why = "ip"; return false; }
  if (!net_parse_ip(fw_arg_str("host", "10.0.2.2"), &s->host)) { *why = "host"; return false; }
  if (mask < 1 || mask > 32) { *why = "mask"; return false; }
  s->mask = mask == 32 ? 0xffffffffu : ~(0xffffffffu >> mask);
  const char *m = fw_arg("mac");
  if (m && *m) {
    if (!parse_mac(m, s->mac)) { *why = "mac"; return false; }
  } else {
    memcpy(s->mac, nic->has_mac ? nic->mac : qemu_mac, 6);
  }
  const char *hm = fw_arg("host_mac");
  if (hm && *hm) {
    if (!parse_mac(hm, s->host_mac)) { *why = "host_mac"; return false; }
    s->host_mac_ok = true;
  }
  s->answer = fw_arg_u64("answer", 0) != 0;
  return true;
}

uint32_t net_sum(const void *p, uint32_t len, uint32_t sum)
{
  const uint8_t *b = p;
  for (; len >= 2; len -= 2, b += 2)
    sum += (uint32_t)b[0] << 8 | b[1];
  if (len)
    sum += (uint32_t)b[0] << 8;
  return sum;
}

uint16_t net_fold(uint32_t sum)
{
  while (sum >> 16)
    sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static uint8_t *eth_header(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
  memcpy(f, dst, 6);
  memcpy(f + 6, src, 6);
  put_be16(f + 12, type);
  return f + ETH_HLEN;
}

static uint8_t *ip_header(struct net *s, uint8_t *ip, uint8_t proto, uint32_t dst, uint32_t payload)
{
  ip[0] = 0x45;
  ip[1] = 0;
  put_be16(ip + 2, (uint16_t)(IP_HLEN + payload));
  put_be16(ip + 4, s->ip_id++);
  put_be16(ip + 6, 0x4000);   /* DF */
  ip[8] = 64;
  ip[9] = proto;
  put_be16(ip + 10, 0);
  put_be32(ip + 12, s->ip);
  put_be32(ip + 16, dst);
  put_be16(ip + 10, net_fold(net_sum(ip, IP_HLEN, 0)));
  return ip + IP_HLEN;
}

/* A TX buffer, reclaiming used slots if none is free. */
static uint8_t *tx_buf(struct net *s)
{
  uint8_t *f = vnet_tx_buf(s->nic);
  if (!f) {
    vnet_tx_reclaim(s->nic);
    f = vnet_tx_buf(s->nic);
  }
  return f;
}

static void tx_send(struct net *s, uint32_t len)
{
  if (len < 60) {
    /* pad to the Ethernet minimum; the buffer is ours */
    uint8_t *f = vnet_tx_buf(s->nic);
    memset(f + len, 0, 60 - len);
    len = 60;
  }
  vnet_tx_queue(s->nic, len);
  vnet_tx_kick(s->nic);
}

bool net_send_arp(struct net *s, uint16_t op, const uint8_t *tha, uint32_t tpa)
{
  uint8_t *f = tx_buf(s);
  if (!f)
    return false;
  uint8_t *a = eth_header(f, op == 1 ? bcast : tha, s->mac, ETH_P_ARP);
  put_be16(a, 1);
  put_be16(a + 2, ETH_P_IP);
  a[4] = 6;
  a[5] = 4;
  put_be16(a + 6, op);
  memcpy(a + 8, s->mac, 6);
  put_be32(a + 14, s->ip);
  if (op == 1)
    memset(a + 18, 0, 6);
  else
    memcpy(a + 18, tha, 6);
  put_be32(a + 24, tpa);
  tx_send(s, ETH_HLEN + 28);
  return true;
}

bool net_send_icmp(struct net *s, uint8_t type, uint16_t id, uint16_t seq, const void *data, uint32_t len)
{
  if (len > 1500 - IP_HLEN - ICMP_HLEN || !s->host_mac_ok)
    return false;
  uint8_t *f = tx_buf(s);
  if (!f)
    return false;
  uint8_t *ip = eth_header(f, s->host_mac, s->mac, ETH_P_IP);
  uint8_t *ic = ip_header(s, ip, IPPROTO_ICMP, s->host, ICMP_HLEN + len);
  ic[0] = type;
  ic[1] = 0;
  put_be16(ic + 2, 0);
  put_be16(ic + 4, id);
  put_be16(ic + 6, seq);
  memcpy(ic + ICMP_HLEN, data, len);
  put_be16(ic + 2, net_fold(net_sum(ic, ICMP_HLEN + len, 0)));
  tx_send(s, ETH_HLEN + IP_HLEN + ICMP_HLEN + len);
  return true;
}

static uint32_t udp_pseudo(uint32_t src, uint32_t dst, uint32_t udp_len)
{
  return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_UDP + udp_len;
}

uint32_t net_build_udp(struct net *s, uint8_t *f, uint16_t sport, uint16_t dport, const void *data, uint32_t len)
{
  uint8_t *ip = eth_header(f, s->host_mac, s->mac, ETH_P_IP);
  uint8_t *u = ip_header(s, ip, IPPROTO_UDP, s->host, UDP_HLEN + len);
  put_be16(u, sport);
  put_be16(u + 2, dport);
  put_be16(u + 4, (uint16_t)(UDP_HLEN + len));
  put_be16(u + 6, 0);
  if (data != u + UDP_HLEN)
    memcpy(u + UDP_HLEN, data, len);
  uint16_t c = net_fold(net_sum(u, UDP_HLEN + len, udp_pseudo(s->ip, s->host, UDP_HLEN + len)));
  put_be16(u + 6, c ? c : 0xffff);
  return ETH_HLEN + IP_HLEN + UDP_HLEN + len;
}

uint32_t net_build_tcp_tso(struct net *s, uint8_t *f, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t len,
                           struct virtio_net_hdr *h)
{
  /* the header first: with a 10-byte header, num_buffers overlaps the frame */
  memset(h, 0, sizeof *h);
  h->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h->csum_start = ETH_HLEN + IP_HLEN;
  h->csum_offset = 16;
  h->hdr_len = ETH_HLEN + IP_HLEN + TCP_HLEN;
  if (len > TCP_MSS) {
    h->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    h->gso_size = TCP_MSS;
  }
  uint8_t *ip = eth_header(f, s->host_mac, s->mac, ETH_P_IP);
  uint8_t *t = ip_header(s, ip, IPPROTO_TCP, s->host, TCP_HLEN + len);
  put_be16(t, sport);
  put_be16(t + 2, dport);
  put_be32(t + 4, seq);
  put_be32(t + 8, 1);          /* ack */
  t[12] = 5 << 4;              /* data offset: 20 bytes, no options */
  t[13] = 0x18;                /* ACK | PSH */
  put_be16(t + 14, 65535);     /* window */
  /* the device finishes the checksum: the field holds the pseudo-header sum */
  uint32_t ps = (s->ip >> 16) + (s->ip & 0xffff) + (s->host >> 16) + (s->host & 0xffff) + IPPROTO_TCP + TCP_HLEN + len;
  put_be16(t + 16, (uint16_t)~net_fold(ps));
  put_be16(t + 18, 0);
  return ETH_HLEN + IP_HLEN + TCP_HLEN + len;
}

bool net_send_udp(struct net *s, uint16_t sport, uint16_t dport, const void *data, uint32_t len)
{
  if (len > 1500 - IP_HLEN - UDP_HLEN || !s->host_mac_ok)
    return false;
  uint8_t *f = tx_buf(s);
  if (!f)
    return false;
  tx_send(s, net_build_udp(s, f, sport, dport, data, len));
  return true;
}

static void answer_echo(struct net *s, const uint8_t *eth, const uint8_t *ip, const uint8_t *ic, uint32_t len)
{
  uint8_t *f = tx_buf(s);
  if (!f)
    return;
  uint8_t *rip = eth_header(f, eth + 6, s->mac, ETH_P_IP);
  uint8_t *r = ip_header(s, rip, IPPROTO_ICMP, get_be32(ip + 12), len);
  memcpy(r, ic, len);
  r[0] = 0;   /* echo reply */
  put_be16(r + 2, 0);
  put_be16(r + 2, net_fold(net_sum(r, len, 0)));
  tx_send(s, ETH_HLEN + IP_HLEN + len);
  s->icmp_answered++;
}

bool net_handle(struct net *s, const uint8_t *f, uint32_t len, struct net_pkt *p)
{
  if (len < ETH_HLEN)
    return false;
  uint16_t type = get_be16(f + 12);
  if (type == ETH_P_ARP && len >= ETH_HLEN + 28) {
    const uint8_t *a = f + ETH_HLEN;
    if (get_be16(a) != 1 || get_be16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
      return false;
    uint16_t op = get_be16(a + 6);
    uint32_t spa = get_be32(a + 14), tpa = get_be32(a + 24);
    if (spa == s->host) {
      memcpy(s->host_mac, a + 8, 6);
      s->host_mac_ok = true;
    }
    if (op == 1 && tpa == s->ip) {
      net_send_arp(s, 2, a + 8, spa);
      s->arp_answered++;
    }
    return false;
  }
  if (type != ETH_P_IP || len < ETH_HLEN + IP_HLEN) {
    s->ignored++;
    return false;
  }
  const uint8_t *ip = f + ETH_HLEN;
  uint32_t ihl = (ip[0] & 0xf) * 4u, tot = get_be16(ip + 2);
  if ((ip[0] >> 4) != 4 || ihl < IP_HLEN || tot < ihl || ETH_HLEN + tot > len ||
      get_be32(ip + 16) != s->ip || (get_be16(ip + 6) & 0x3fff)) {   /* not ours, or a fragment */
    s->ignored++;
    return false;
  }
  if (net_fold(net_sum(ip, ihl, 0))) {
    s->bad_csum++;
    return false;
  }
  const uint8_t *l4 = ip + ihl;
  uint32_t l4_len = tot - ihl;
  if (ip[9] == IPPROTO_ICMP && l4_len >= ICMP_HLEN && l4[0] == 8) {
    if (s->answer && !net_fold(net_sum(l4, l4_len, 0)))
      answer_echo(s, f, ip, l4, l4_len);
    return false;
  }
  if (ip[9] == IPPROTO_UDP) {
    if (l4_len < UDP_HLEN || get_be16(l4 + 4) > l4_len || get_be16(l4 + 4) < UDP_HLEN)
      return false;
    l4_len = get_be16(l4 + 4);
    if (get_be16(l4 + 6) &&
        net_fold(net_sum(l4, l4_len, udp_pseudo(get_be32(ip + 12), s->ip, l4_len)))) {
      s->bad_csum++;
      return false;
    }
  }
  p->eth = f;
  p->eth_len = len;
  p->proto = ip[9];
  p->src = get_be32(ip + 12);
  p->dst = s->ip;
  p->l4 = l4;
  p->l4_len = l4_len;
  return true;
}

void net_release(struct net *s)
{
  if (s->held) {
    vnet_rx_done(s->nic);
    s->held = false;
  }
}

bool net_next(struct net *s, struct net_pkt *p, uint64_t deadline)
{
  net_release(s);
  for (;;) {
    uint32_t len;
    uint8_t *f = vnet_rx(s->nic, &len);
    if (!f) {
      if (!vnet_wait(s->nic, false, deadline))
        return false;
      continue;
    }
    if (net_handle(s, f, len, p)) {
      s->held = true;
      return true;
    }
    vnet_rx_done(s->nic);
  }
}

bool net_resolve_host(struct net *s, uint64_t deadline)
{
  struct net_pkt p;
  uint64_t step = fw_ms_to_tsc(250);
  while (!s->host_mac_ok) {
    uint64_t now = rdtsc();
    if (now >= deadline)
      return false;
    net_send_arp(s, 1, NULL, s->host);
    uint64_t until = now + step < deadline ? now + step : deadline;
    while (!s->host_mac_ok && net_next(s, &p, until))
      ;
  }
  net_release(s);
  return true;
}

int net_bring_up(const char *name, struct vnet *nic, struct net *s, struct vnet_opts *o)
{
  const char *why = NULL;
  struct vnet_opts local;
  if (!o) {
    o = &local;
    if (!vnet_opts_parse(o, &why)) {
      printf("%s: bad argument %s\n", name, why);
      return FW_EXIT_USAGE;
    }
  }
  if (!vnet_init(nic, o, &why)) {
    printf("%s: FAIL device: %s\n", name, why);
    return FW_EXIT_FAIL;
  }
  if (s && !net_init(s, nic, &why)) {
    printf("%s: bad argument %s\n", name, why);
    return FW_EXIT_USAGE;
  }
  if (fw_arg_u64("info", 0)) {
    char buf[160];
    printf("%s: device %s\n", name, vnet_describe(nic, buf, sizeof buf));
  }
  return FW_EXIT_OK;
}
