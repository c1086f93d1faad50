/* tap-floor — the packet-path floor for tsvisor's benchmark: the same system
 * calls tsvisor's virtio-net backend makes on the same TAP, with nothing else
 * in between, plus the RX-side sender both the floor and tsvisor are fed by.
 *
 *   cc -O2 -o tap-floor scripts/bench/tap-floor.c
 *   ip netns exec NS ./tap-floor tx   TAP  SIZE COUNT [gso]
 *   ip netns exec NS ./tap-floor rx   TAP  SIZE COUNT [IDLE_MS] [gso] [start=MS]
 *   ip netns exec NS ./tap-floor send IF   SIZE COUNT [gso] [mac=M] [pps=N]
 *
 * Run inside a network namespace whose TAP (persistent, up, 10.0.2.2/24,
 * as `ip tuntap add dev tap0 mode tap` makes it) is the one tsvisor would use.
 *
 * tx: opens the TAP as tsvisor does (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR,
 *   non-blocking, header 12 bytes as with VERSION_1, send buffer unlimited,
 *   offloads as the guest would negotiate them: none, or CSUM|TSO4 with
 *   `gso`) and writes COUNT identical frames of SIZE bytes, one writev of
 *   [virtio-net header, frame] each, like the TX bottom half. The frame is the
 *   one firmware/scenarios/tx-burst.c sends: UDP/IPv4 10.0.2.15:40009 ->
 *   10.0.2.2:9 (header all zero), SIZE 60..1514; with `gso` a TCP/IPv4 frame
 *   with a TSO header (NEEDS_CSUM, csum_start 34, csum_offset 16, gso TCPV4,
 *   gso_size 1448, hdr_len 54) as tx-burst sends with tso=1, SIZE 55..65549.
 *   EAGAIN waits in poll(POLLOUT). Prints
 *     tap-floor tx size=S frames=N ns=T cpu_ns=C
 *   T: CLOCK_MONOTONIC from before the first writev to after the last;
 *   C: the process's CPU time (user + system) over the same span. The
 *   namespace's answers (TCP RSTs, rate-limited ICMP) wait for an ARP reply
 *   nobody sends and are dropped; give tx-burst host_mac=<the TAP's MAC> so
 *   that it sends no ARP request the namespace could learn its MAC from, and
 *   its TX is not slowed by RSTs coming back (a third of the rate for TSO).
 *
 * rx: opens the TAP the same way (offloads CSUM|TSO4 with `gso` or a SIZE
 *   above 1514, as tsvisor sets them for a guest with GUEST_CSUM +
 *   GUEST_TSO4, e.g. rx-sink tso=1; else none), prints
 *     tap-floor rx: ready
 *   and reads frames (poll + read, one frame per read, into a 128 KiB buffer)
 *   until COUNT frames (0: no limit) or IDLE_MS (default 1000) without one
 *   after the first; the first may take start= ms (default 30000). Prints
 *     tap-floor rx size=S frames=N bytes=B ns=T cpu_ns=C
 *   B: frame bytes without the virtio-net header (every frame counted, as
 *   rx-sink does); T: first frame to last; C: CPU time over the same span.
 *   Exit status 1 if no frame came.
 *
 * send: an AF_PACKET socket on interface IF (the TAP as the namespace sees
 *   it) sends COUNT frames of SIZE bytes as fast as it can (or at pps=N) to
 *   mac=M (default 52:54:00:12:34:56, tsvisor's default guest MAC; the device
 *   is promiscuous until a driver programs its filter, so any MAC arrives):
 *   UDP/IPv4 10.0.2.2:9 -> 10.0.2.15:40009, SIZE 60..1514. With `gso` each
 *   send is one TCP/IPv4 super-frame with a virtio-net header
 *   (PACKET_VNET_HDR: TCPV4, gso_size 1448, NEEDS_CSUM): a reader that set
 *   TUN_F_TSO4 (rx with `gso`, tsvisor with rx-sink tso=1) gets it as one
 *   frame, any other reader as ~1448-byte segments cut by the kernel. The
 *   kernel also cuts any GSO frame of gso_max_size (65536, the most a TAP
 *   allows) or more, so SIZE 65536..65549 is sent as 65535 (said on stderr;
 *   the result line shows the size sent). Waits
 *   (up to 5 s) for the TAP to be running (a reader has it open), then sends.
 *   Prints
 *     tap-floor send size=S frames=N ns=T
 *   The TAP drops what its reader has not taken when its queue (txqueuelen,
 *   1000) is full, so the receiver's count, not this one, is what arrived;
 *   pps= keeps a slow reader from losing frames.
 *
 * Disable IPv6 on the TAP (sysctl -w net.ipv6.conf.tap0.disable_ipv6=1 in
 * the namespace): otherwise the namespace's MLD reports reach the reader (and
 * a guest) when the carrier comes up and are counted as frames.
 *
 * Exit status 0; 1 on a system-call failure (one line on stderr); 2 on
 * bad arguments. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define GUEST_IP 0x0a00020f   /* 10.0.2.15 */
#define HOST_IP 0x0a000202    /* 10.0.2.2 */
#define GUEST_PORT 40009
#define HOST_PORT 9           /* discard */
#define VNET_HDR_LEN 12       /* struct virtio_net_hdr_mrg_rxbuf: what tsvisor uses with VERSION_1 */
#define GSO_SIZE 1448
#define L2L3_LEN 34           /* Ethernet + IPv4 */
#define TCP_HLEN 20
#define UDP_HLEN 8
#define MAX_FRAME 65549       /* Ethernet header + the largest IPv4 packet */
#define RX_BUF (128 * 1024)
#define GSO_WHOLE_MAX 65535   /* the largest GSO frame that reaches a TAP reader whole */

static const uint8_t guest_mac_default[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

static void die(const char *what)
{
  fprintf(stderr, "tap-floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *why)
{
  fprintf(stderr,
          "tap-floor: %s\n"
          "usage: tap-floor tx TAP SIZE COUNT [gso]\n"
          "       tap-floor rx TAP SIZE COUNT [IDLE_MS] [gso] [start=MS]\n"
          "       tap-floor send IF SIZE COUNT [gso] [mac=M] [pps=N]\n",
          why);
  exit(2);
}

static uint64_t now_ns(clockid_t c)
{
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t parse_u64(const char *s, const char *what)
{
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end || s[0] == '-')
    usage(what);
  return v;
}

static int parse_mac(const char *s, uint8_t *mac)
{
  unsigned v[6];
  char tail;
  if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
    return 0;
  for (int i = 0; i < 6; i++)
    mac[i] = (uint8_t)v[i];
  return 1;
}

/* ---- frames (the layout tx-burst and lib/net.c build) ---- */

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
  for (; len >= 2; len -= 2, p += 2)
    sum += (uint32_t)p[0] << 8 | p[1];
  if (len)
    sum += (uint32_t)p[0] << 8;
  return sum;
}

static uint16_t fold(uint32_t sum)
{
  while (sum >> 16)
    sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

static uint32_t pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len)
{
  return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

/* Ethernet + IPv4 (DF, TTL 64, id 0) + UDP with checksum, or TCP (ACK|PSH)
 * whose checksum field holds the pseudo-header sum for the device to finish
 * (NEEDS_CSUM). Payload bytes count up from 0 like tx-burst's. Fills *h for
 * TCP: NEEDS_CSUM, and GSO TCPV4 when the frame is larger than gso_size
 * segments. Returns nothing: the frame is `size` bytes. */
static void build_frame(uint8_t *f, size_t size, const uint8_t *dst_mac, const uint8_t *src_mac,
                        uint32_t src_ip, uint32_t dst_ip, uint16_t sport, uint16_t dport, int tcp,
                        struct virtio_net_hdr *h)
{
  size_t l4 = tcp ? TCP_HLEN : UDP_HLEN;
  size_t payload = size - L2L3_LEN - l4;
  uint8_t *ip = f + 14, *t = ip + 20;
  memcpy(f, dst_mac, 6);
  memcpy(f + 6, src_mac, 6);
  put16(f + 12, ETH_P_IP);
  memset(ip, 0, 20);
  ip[0] = 0x45;
  put16(ip + 2, (uint16_t)(size - 14));
  put16(ip + 6, 0x4000);
  ip[8] = 64;
  ip[9] = tcp ? IPPROTO_TCP : IPPROTO_UDP;
  put32(ip + 12, src_ip);
  put32(ip + 16, dst_ip);
  put16(ip + 10, (uint16_t)~fold(sum16(ip, 20, 0)));
  for (size_t i = 0; i < payload; i++)
    t[l4 + i] = (uint8_t)i;
  memset(t, 0, l4);
  put16(t, sport);
  put16(t + 2, dport);
  memset(h, 0, sizeof *h);
  if (tcp) {
    put32(t + 4, 1);         /* seq */
    put32(t + 8, 1);         /* ack */
    t[12] = 5 << 4;          /* data offset: 20 bytes */
    t[13] = 0x18;            /* ACK | PSH */
    put16(t + 14, 65535);    /* window */
    /* CHECKSUM_PARTIAL convention: the pseudo-header sum, not inverted */
    put16(t + 16, fold(pseudo(src_ip, dst_ip, IPPROTO_TCP, (uint32_t)(size - L2L3_LEN))));
    h->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h->csum_start = L2L3_LEN;
    h->csum_offset = 16;
    h->hdr_len = L2L3_LEN + TCP_HLEN;
    if (payload > GSO_SIZE) {
      h->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
      h->gso_size = GSO_SIZE;
    }
  } else {
    put16(t + 4, (uint16_t)(size - L2L3_LEN));
    uint16_t c = (uint16_t)~fold(sum16(t, size - L2L3_LEN, pseudo(src_ip, dst_ip, IPPROTO_UDP, (uint32_t)(size - L2L3_LEN))));
    put16(t + 6, c ? c : 0xffff);
  }
}

static void check_size(uint64_t size, int gso)
{
  if (gso ? (size < L2L3_LEN + TCP_HLEN + 1 || size > MAX_FRAME) : (size < 60 || size > 1514))
    usage(gso ? "SIZE must be 55..65549 with gso" : "SIZE must be 60..1514 (larger frames need gso)");
}

/* ---- the TAP, opened as src/net/tap.ts opens it ---- */

static int tap_open(const char *name, unsigned offloads)
{
  if (strlen(name) >= IFNAMSIZ)
    usage("interface name too long");
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, name);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (ioctl(fd, TUNSETIFF, &ifr) < 0)
    die("TUNSETIFF");
  int hdr = VNET_HDR_LEN;
  if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
    die("TUNSETVNETHDRSZ");
  if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)offloads) < 0)
    die("TUNSETOFFLOAD");
  int sndbuf = INT_MAX;
  if (ioctl(fd, TUNSETSNDBUF, &sndbuf) < 0)
    die("TUNSETSNDBUF");
  return fd;
}

/* The interface's flags (and MAC, index), through a socket of the current namespace. */
static short if_info(const char *name, uint8_t *mac, int *index)
{
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    die("socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (mac) {
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0)
      die("SIOCGIFHWADDR (is the interface in this namespace?)");
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  }
  if (index) {
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0)
      die("SIOCGIFINDEX");
    *index = ifr.ifr_ifindex;
  }
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
    die("SIOCGIFFLAGS");
  close(s);
  return ifr.ifr_flags;
}

static int has_word(int argc, char **argv, int from, const char *w)
{
  for (int i = from; i < argc; i++)
    if (!strcmp(argv[i], w))
      return 1;
  return 0;
}

static const char *opt(int argc, char **argv, int from, const char *key)
{
  size_t k = strlen(key);
  for (int i = from; i < argc; i++)
    if (!strncmp(argv[i], key, k) && argv[i][k] == '=')
      return argv[i] + k + 1;
  return NULL;
}

/* ---- modes ---- */

static int mode_tx(const char *tap, uint64_t size, uint64_t count, int gso)
{
  check_size(size, gso);
  uint8_t tap_mac[6];
  if (!(if_info(tap, tap_mac, NULL) & IFF_UP)) {
    fprintf(stderr, "tap-floor: %s is down: ip link set %s up\n", tap, tap);
    return 1;
  }
  int fd = tap_open(tap, gso ? TUN_F_CSUM | TUN_F_TSO4 : 0);
  static uint8_t frame[MAX_FRAME];
  struct virtio_net_hdr_mrg_rxbuf hdr;
  memset(&hdr, 0, sizeof hdr);
  build_frame(frame, size, tap_mac, guest_mac_default, GUEST_IP, HOST_IP, GUEST_PORT, HOST_PORT, gso, &hdr.hdr);
  struct iovec iov[2] = { { &hdr, VNET_HDR_LEN }, { frame, size } };
  struct pollfd pfd = { fd, POLLOUT, 0 };
  uint64_t c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = now_ns(CLOCK_MONOTONIC);
  for (uint64_t i = 0; i < count;) {
    ssize_t r = writev(fd, iov, 2);
    if (r >= 0) {
      i++;
      continue;
    }
    if (errno == EAGAIN)
      poll(&pfd, 1, -1);
    else if (errno != EINTR)
      die("writev");
  }
  uint64_t t1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  printf("tap-floor tx size=%llu frames=%llu ns=%llu cpu_ns=%llu\n", (unsigned long long)size,
         (unsigned long long)count, (unsigned long long)(t1 - t0), (unsigned long long)(c1 - c0));
  close(fd);
  return 0;
}

static int mode_rx(const char *tap, uint64_t size, uint64_t count, uint64_t idle_ms, uint64_t start_ms, int gso)
{
  int fd = tap_open(tap, gso ? TUN_F_CSUM | TUN_F_TSO4 : 0);
  static uint8_t buf[RX_BUF];
  uint64_t frames = 0, bytes = 0, first = 0, last = 0, c0 = 0, c1 = 0;
  struct pollfd pfd = { fd, POLLIN, 0 };
  printf("tap-floor rx: ready\n");
  fflush(stdout);
  while (!count || frames < count) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN)
        die("read");
      int timeout = (int)(frames ? idle_ms : start_ms);
      int p = poll(&pfd, 1, timeout);
      if (p < 0 && errno != EINTR)
        die("poll");
      if (p == 0)
        break;
      continue;
    }
    if (r < VNET_HDR_LEN)
      continue;
    last = now_ns(CLOCK_MONOTONIC);
    if (!frames) {
      first = last;
      c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    }
    frames++;
    bytes += (uint64_t)r - VNET_HDR_LEN;
    c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  }
  printf("tap-floor rx size=%llu frames=%llu bytes=%llu ns=%llu cpu_ns=%llu\n", (unsigned long long)size,
         (unsigned long long)frames, (unsigned long long)bytes, (unsigned long long)(last - first),
         (unsigned long long)(c1 - c0));
  close(fd);
  return frames ? 0 : 1;
}

static int mode_send(const char *ifname, uint64_t size, uint64_t count, int gso, const uint8_t *dst, uint64_t pps)
{
  check_size(size, gso);
  if (gso && size > GSO_WHOLE_MAX) {
    /* netif_skb_features drops GSO for skb->len >= gso_max_size, and a TAP's cannot exceed 65536 */
    fprintf(stderr, "tap-floor: send: SIZE %llu lowered to %d: the kernel segments GSO frames of 64 KiB and more\n",
            (unsigned long long)size, GSO_WHOLE_MAX);
    size = GSO_WHOLE_MAX;
  }
  if (strlen(ifname) >= IFNAMSIZ)
    usage("interface name too long");
  uint8_t if_mac[6];
  int ifindex = 0;
  /* A TAP is running once a reader has it open; before that it drops everything. */
  int waited = 0;
  while ((if_info(ifname, if_mac, &ifindex) & (IFF_UP | IFF_RUNNING)) != (IFF_UP | IFF_RUNNING)) {
    if (waited++ >= 500) {
      fprintf(stderr, "tap-floor: %s is not running (down, or no reader has the TAP open)\n", ifname);
      return 1;
    }
    usleep(10000);
  }
  if (waited)
    usleep(100000);   /* the carrier just came up: let the qdisc be attached */
  int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  if (s < 0)
    die("socket(AF_PACKET)");
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_ifindex = ifindex;
  if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0)
    die("bind(AF_PACKET)");
  int one = 1;
  if (gso && setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0)
    die("PACKET_VNET_HDR");
  /* AF_PACKET's virtio-net header is the 10-byte struct virtio_net_hdr */
  static uint8_t msg[sizeof(struct virtio_net_hdr) + MAX_FRAME];
  struct virtio_net_hdr h;
  uint8_t *frame = gso ? msg + sizeof h : msg;
  build_frame(frame, size, dst, if_mac, HOST_IP, GUEST_IP, HOST_PORT, GUEST_PORT, gso, &h);
  size_t len = size;
  if (gso) {
    memcpy(msg, &h, sizeof h);
    len += sizeof h;
  }
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  for (uint64_t i = 0; i < count;) {
    if (pps && (i & 15) == 0) {
      /* pace in groups of 16: sleep until frame i is due */
      uint64_t due = t0 + i * 1000000000ull / pps, t = now_ns(CLOCK_MONOTONIC);
      if (due > t) {
        struct timespec ts = { (time_t)((due - t) / 1000000000ull), (long)((due - t) % 1000000000ull) };
        nanosleep(&ts, NULL);
      }
    }
    ssize_t r = send(s, msg, len, 0);
    if (r >= 0) {
      i++;
      continue;
    }
    if (errno == ENOBUFS || errno == EAGAIN)
      usleep(50);
    else if (errno != EINTR)
      die("send");
  }
  uint64_t t1 = now_ns(CLOCK_MONOTONIC);
  printf("tap-floor send size=%llu frames=%llu ns=%llu\n", (unsigned long long)size, (unsigned long long)count,
         (unsigned long long)(t1 - t0));
  close(s);
  return 0;
}

int main(int argc, char **argv)
{
  if (argc < 5)
    usage("missing arguments");
  const char *mode = argv[1], *name = argv[2];
  uint64_t size = parse_u64(argv[3], "SIZE is not a number");
  uint64_t count = parse_u64(argv[4], "COUNT is not a number");
  int gso = has_word(argc, argv, 5, "gso");
  if (!strcmp(mode, "tx")) {
    if (!count)
      usage("COUNT must be at least 1");
    return mode_tx(name, size, count, gso);
  }
  if (!strcmp(mode, "rx")) {
    uint64_t idle = 1000;
    if (argc > 5 && argv[5][0] >= '0' && argv[5][0] <= '9')
      idle = parse_u64(argv[5], "IDLE_MS is not a number");
    const char *st = opt(argc, argv, 5, "start");
    uint64_t start = st ? parse_u64(st, "start= is not a number") : 30000;
    if (idle > INT_MAX || start > INT_MAX)
      usage("IDLE_MS/start= too large");
    return mode_rx(name, size, count, idle, start, gso || size > 1514);
  }
  if (!strcmp(mode, "send")) {
    uint8_t dst[6];
    memcpy(dst, guest_mac_default, 6);
    const char *m = opt(argc, argv, 5, "mac");
    if (m && !parse_mac(m, dst))
      usage("mac= is not a MAC address");
    const char *p = opt(argc, argv, 5, "pps");
    return mode_send(name, size, count, gso, dst, p ? parse_u64(p, "pps= is not a number") : 0);
  }
  usage("mode must be tx, rx or send");
}
