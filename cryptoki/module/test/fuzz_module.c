/*
 * fuzz_module.c: the module against a hostile daemon.
 *
 * A daemon thread in this process answers the module's frames on a Unix
 * socket with replies taken from the input; the input drives one sequence
 * of real PKCS#11 calls (slots, tokens, mechanisms, a session, login,
 * find, attributes with arrays and length queries, sign and encrypt with
 * a size query first, key pairs, wrapping, the 3.0 messages and the 3.2
 * functions) through the module, linked in and built with ASan/UBSan.
 * Whatever the replies, the module must not touch memory outside the
 * caller's buffers (each is allocated to its exact size), report more
 * than the caller's count or buffer holds with CKR_OK, hang or leave a
 * lock held (the next input's C_Initialize would wait). A call waits
 * for a reply no longer than the configured timeout, one second here.
 *
 * The input: one byte for the hello (bits 0-2: the version answered, 6
 * less that; bit 3: status 3, the application known; bit 4: the module
 * offers rings and they are taken, so the frames go through shared
 * memory), then one record per request frame, in the order they come:
 *
 *   ctl u8 | rv u8 | length u16 (big-endian) | results (length bytes)
 *
 * ctl bit 0 flips the has-results flag from what rv implies, bit 1 sets
 * the idle flag, bit 2 answers with another request id, bit 3 sends half
 * the reply and closes, bit 4 closes without answering, bit 5 sends a
 * frame length one more than the reply and closes, bit 6 reads the
 * results as tokens (tokens(); length counts tokens), so that the
 * lengths in them agree with what follows, bit 7 (rings) rewrites a word
 * of the control page once the reply is in the ring: 5 bytes after the
 * record's header, the word (mod 8) and its value (u32), as a daemon
 * may at any time (the first three of an input). rv indexes a table of
 * return values (the table's length and up: that byte as the rv). Past
 * the last record every request gets CKR_GENERAL_ERROR.
 *
 * Built with libFuzzer (clang -fsanitize=fuzzer), or with FUZZ_DRIVER, a
 * main of its own: "fuzz-module -runs=N [-max_total_time=SECONDS]
 * [-seed=S] [FILE...]" runs each
 * FILE (or the files of a directory), then N inputs mutated from them,
 * deterministically. With FUZZ_TRACE set in the environment the daemon
 * prints each request and the reply it gets.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "p11compat.h"

CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
		     CK_FLAGS flags);

/* ---- the daemon ---- */

static pthread_mutex_t in_mu = PTHREAD_MUTEX_INITIALIZER;
static const uint8_t *in_data;
static size_t in_len, in_off;
static int listen_fd = -1;

#define MAX_CONNS 16
#define RING_CALL 0xFFFFFF01u
#define RING_CTRL 4096

static int trace; /* FUZZ_TRACE, read once: the application thread sets the environment */
static int in_ring; /* this input's hello byte asked for rings */
/* Rewrites of the control page this input made: a call a rewrite leaves
 * waiting waits out its timeout, so only the first three count, and an
 * input stays well within libFuzzer's -timeout. */
static int in_cors;

/* One connection: its socket, and once the offer is taken its rings,
 * with the counters the daemon owns kept apart from the shared page. */
struct conn {
	int fd;
	int hello_done;
	uint8_t *base;
	size_t len;
	uint32_t size, req_tail, rep_head;
};

static uint32_t *ring_word(struct conn *c, int off) { return (uint32_t *)(c->base + off); }
static uint32_t ring_load(struct conn *c, int off) { return __atomic_load_n(ring_word(c, off), __ATOMIC_SEQ_CST); }
static void ring_store(struct conn *c, int off, uint32_t v) { __atomic_store_n(ring_word(c, off), v, __ATOMIC_SEQ_CST); }

static void ring_wake(struct conn *c, int off)
{
	syscall(SYS_futex, ring_word(c, off), FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int read_full(int fd, void *p, size_t n)
{
	uint8_t *b = p;
	while (n > 0) {
		ssize_t r = read(fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

static void write_full(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n > 0) {
		ssize_t r = send(fd, b, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		b += r;
		n -= (size_t)r;
	}
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, v >> 32);
	put32(p + 4, (uint32_t)v);
}

static const uint64_t rvs[] = {
	CKR_OK,
	CKR_BUFFER_TOO_SMALL,
	CKR_ATTRIBUTE_SENSITIVE,
	CKR_ATTRIBUTE_TYPE_INVALID,
	CKR_OPERATION_NOT_INITIALIZED,
	CKR_USER_NOT_LOGGED_IN,
	CKR_SESSION_HANDLE_INVALID,
	CKR_DEVICE_ERROR,
	0xFFFFFFFFFFFFFFFFull,
};

/* take copies the next n input bytes into p (zeros past the end) and
 * reports whether there were any. */
static int take(void *p, size_t n)
{
	memset(p, 0, n);
	if (in_off >= in_len)
		return 0;
	size_t k = in_len - in_off < n ? in_len - in_off : n;
	memcpy(p, in_data + in_off, k);
	in_off += k;
	return 1;
}

/* out sends reply bytes: on the socket, or into the reply ring (when
 * there is no room, -1: the connection closes). */
static int out(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->base == NULL) {
		write_full(c->fd, p, n);
		return 0;
	}
	uint32_t used = c->rep_head - ring_load(c, 320);
	if (used > c->size || n > c->size - used)
		return -1;
	uint8_t *data = c->base + RING_CTRL + c->size;
	for (size_t i = 0; i < n; i++)
		data[(c->rep_head + i) & (c->size - 1)] = p[i];
	c->rep_head += (uint32_t)n;
	ring_store(c, 256, c->rep_head);
	if (ring_load(c, 384))
		ring_wake(c, 256);
	return 0;
}

/* answer answers one request frame; it returns -1 when the connection
 * is to close. */
/* Token mode: results built from the record's bytes as tokens, so that
 * every length the reply carries agrees with what follows it. */
struct tbuf {
	uint8_t *p;
	size_t n, cap;
};

static void tput(struct tbuf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (b->n + n > b->cap) {
		size_t cap = (b->n + n) * 2;
		b->p = realloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void tput32(struct tbuf *b, uint32_t v)
{
	uint8_t x[4];
	put32(x, v);
	tput(b, x, 4);
}

static void tput64(struct tbuf *b, uint64_t v)
{
	uint8_t x[8];
	put64(x, v);
	tput(b, x, 8);
}

/* tokens reads up to max tokens from src[*at..end] into b:
 *   0 x: u8 x          1 x: u32 x            2 x: u64 x
 *   3 x8: u64 x8       4 n d(n): bytes d     5: NULL bytes
 *   6: u64 all ones    7 k: bytes made of the next k tokens
 *   8 n: bytes of n x 0x41 (n in units of 16) */
static void tokens(struct tbuf *b, const uint8_t *src, size_t *at, size_t end, size_t max, int depth)
{
	for (size_t t = 0; t < max && *at < end; t++) {
		uint8_t op = src[(*at)++] % 9;
		uint8_t x = *at < end ? src[*at] : 0;
		switch (op) {
		case 0:
			tput(b, &x, 1), (*at)++;
			break;
		case 1:
			tput32(b, x), (*at)++;
			break;
		case 2:
			tput64(b, x), (*at)++;
			break;
		case 3: {
			uint8_t v[8] = {0};
			size_t k = end - *at < 8 ? end - *at : 8;
			memcpy(v, src + *at, k);
			*at += k;
			tput(b, v, 8);
			break;
		}
		case 4: {
			(*at)++;
			size_t k = end - *at < x ? end - *at : x;
			tput32(b, (uint32_t)k);
			tput(b, src + *at, k);
			*at += k;
			break;
		}
		case 5:
			tput32(b, 0xFFFFFFFFu);
			break;
		case 6:
			tput64(b, ~0ull);
			break;
		case 7: {
			(*at)++;
			struct tbuf sub = {0};
			if (depth < 3)
				tokens(&sub, src, at, end, x, depth + 1);
			tput32(b, (uint32_t)sub.n);
			if (sub.n > 0)
				tput(b, sub.p, sub.n);
			free(sub.p);
			break;
		}
		default: {
			(*at)++;
			uint8_t fill[16];
			memset(fill, 0x41, sizeof fill);
			tput32(b, (uint32_t)x * 16);
			for (int i = 0; i < x; i++)
				tput(b, fill, sizeof fill);
		}
		}
	}
}

static int answer(struct conn *c, uint32_t id)
{
	uint8_t rec[4];
	pthread_mutex_lock(&in_mu);
	int have = take(rec, sizeof rec);
	uint8_t ctl = rec[0];
	uint64_t rv = rec[1] < sizeof rvs / sizeof rvs[0] ? rvs[rec[1]] : rec[1];
	if (!have)
		ctl = 0, rv = CKR_GENERAL_ERROR;
	uint8_t cor[5] = {0};
	int rewrite = 0;
	if (ctl & 0x80) {
		take(cor, sizeof cor);
		rewrite = in_cors++ < 3;
	}
	size_t n = ((size_t)rec[2] << 8) | rec[3];
	if (!have || in_off >= in_len)
		n = 0;
	else if (n > in_len - in_off)
		n = in_len - in_off;
	struct tbuf res = {0};
	if (ctl & 0x40) {
		/* n counts tokens here. */
		size_t at = in_off;
		tokens(&res, in_data, &at, in_len, n, 0);
		in_off = at;
	} else {
		tput(&res, in_data + in_off, n);
		in_off += n;
	}
	pthread_mutex_unlock(&in_mu);
	n = res.n;
	uint8_t *frame = malloc(17 + n);
	if (n > 0)
		memcpy(frame + 17, res.p, n);
	free(res.p);

	int results = rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_SENSITIVE ||
		      rv == CKR_ATTRIBUTE_TYPE_INVALID;
	if (!results && !(ctl & 1))
		n = 0;
	results ^= ctl & 1;
	put32(frame, (uint32_t)(13 + n + ((ctl & 0x20) != 0)));
	put32(frame + 4, ctl & 4 ? id + 1 : id);
	put64(frame + 8, rv);
	frame[16] = (uint8_t)(results | (ctl & 2));
	int ret = 0;
	if (trace)
		fprintf(stderr, "  reply ctl 0x%x rv 0x%lx, %zu bytes of results\n", ctl, (unsigned long)rv, n);
	if (ctl & 0x10) {
		ret = -1;
	} else if (ctl & 8) {
		out(c, frame, (17 + n) / 2);
		ret = -1;
	} else {
		ret = out(c, frame, 17 + n);
		if (ctl & 0x20)
			ret = -1;
	}
	if (rewrite && c->base != NULL) {
		/* A counter of the control page rewritten, and both ends woken. */
		int off = (cor[0] % 8) * 64;
		ring_store(c, off, (uint32_t)cor[1] << 24 | (uint32_t)cor[2] << 16 | (uint32_t)cor[3] << 8 | cor[4]);
		ring_wake(c, 0), ring_wake(c, 64), ring_wake(c, 256), ring_wake(c, 320);
	}
	free(frame);
	return ret;
}

/* recv_head reads a frame's first 4 bytes from the socket, taking the
 * memfd an offer carries. */
static int recv_head(struct conn *c, uint8_t head[4], int *memfd)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} cb;
	struct iovec iov = {head, 4};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
	ssize_t k;
	do
		k = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC);
	while (k < 0 && errno == EINTR);
	if (k <= 0)
		return -1;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h))
		if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS)
			memcpy(memfd, CMSG_DATA(h), sizeof(int));
	return read_full(c->fd, head + k, 4 - (size_t)k);
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* request handles one request frame's body; -1 closes the connection. */
static int request(struct conn *c, const uint8_t *body, uint32_t len)
{
	uint32_t id = be32(body), call = be32(body + 4);
	if (trace)
		fprintf(stderr, "request %u call 0x%x, %u bytes%s\n", id, call, len, c->base ? " (ring)" : "");
	return answer(c, id);
}

/* take_offer answers the ring offer: taken when the input asked for
 * rings and the memfd maps, else declined. */
static int take_offer(struct conn *c, const uint8_t *body, uint32_t len, int memfd)
{
	uint8_t a[17] = {0};
	put32(a, 13);
	put64(a + 8, CKR_FUNCTION_NOT_SUPPORTED);
	uint32_t size = len >= 12 ? be32(body + 8) : 0;
	if (in_ring && memfd >= 0 && size >= 4096 && size <= (1u << 20) && (size & (size - 1)) == 0) {
		size_t n = RING_CTRL + 2 * (size_t)size;
		void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
		if (p != MAP_FAILED) {
			c->base = p, c->len = n, c->size = size, c->req_tail = 0, c->rep_head = 0;
			put64(a + 8, CKR_OK);
		}
	}
	if (memfd >= 0)
		close(memfd);
	write_full(c->fd, a, sizeof a);
	return 0;
}

/* serve_socket reads the hello or one frame from the socket and answers
 * it; -1 closes the connection. */
static int serve_socket(struct conn *c)
{
	if (!c->hello_done) {
		uint8_t hello[32], reply[8];
		if (read_full(c->fd, hello, sizeof hello) < 0)
			return -1;
		uint8_t h = 0;
		pthread_mutex_lock(&in_mu);
		if (in_off == 0)
			take(&h, 1);
		pthread_mutex_unlock(&in_mu);
		memcpy(reply, "HSMU", 4);
		unsigned v = ((unsigned)hello[4] << 8) | hello[5];
		unsigned want = 6 - (h & 7) % 6;
		unsigned status = h & 8 ? 3 : 0;
		if (v > want)
			v = want, status = 1;
		reply[4] = (uint8_t)(v >> 8), reply[5] = (uint8_t)v;
		reply[6] = 0, reply[7] = (uint8_t)status;
		write_full(c->fd, reply, sizeof reply);
		c->hello_done = 1;
		return status == 1 ? -1 : 0;
	}
	if (c->base != NULL) {
		/* Once the rings carry the frames the socket says only that
		 * the module closed it. */
		uint8_t b;
		return read(c->fd, &b, 1) <= 0 ? -1 : 0;
	}
	uint8_t head[4];
	int memfd = -1;
	if (recv_head(c, head, &memfd) < 0) {
		if (memfd >= 0)
			close(memfd);
		return -1;
	}
	uint32_t len = be32(head);
	if (len < 8 || len > (16u << 20)) {
		if (memfd >= 0)
			close(memfd);
		return -1;
	}
	uint8_t *body = malloc(len);
	int ret = read_full(c->fd, body, len);
	if (ret == 0)
		ret = be32(body + 4) == RING_CALL ? take_offer(c, body, len, memfd) : request(c, body, len);
	else if (memfd >= 0)
		close(memfd);
	free(body);
	return ret;
}

/* serve_ring answers every whole frame in the request ring; -1 closes
 * the connection. */
static int serve_ring(struct conn *c)
{
	uint8_t *data = c->base + RING_CTRL;
	uint32_t mask = c->size - 1;
	for (;;) {
		uint32_t avail = ring_load(c, 0) - c->req_tail;
		if (avail > c->size)
			return -1;
		if (avail < 4)
			return 0;
		uint8_t head[4];
		for (int i = 0; i < 4; i++)
			head[i] = data[(c->req_tail + i) & mask];
		uint32_t len = be32(head);
		if (len < 8 || len > c->size - 4)
			return -1;
		if (avail < 4 + len)
			return 0;
		uint8_t *body = malloc(len);
		for (uint32_t i = 0; i < len; i++)
			body[i] = data[(c->req_tail + 4 + i) & mask];
		c->req_tail += 4 + len;
		ring_store(c, 64, c->req_tail);
		if (ring_load(c, 192))
			ring_wake(c, 64);
		int ret = request(c, body, len);
		free(body);
		if (ret < 0)
			return -1;
	}
}

/* The rings of closed connections, kept mapped a while: a module asleep
 * on one looks at the socket only when woken or after its slice (250
 * ms), so each is woken whenever its sleep flags say so. */
#define MAX_CLOSED 16
static struct closed {
	struct conn c;
	long long until;
} closed[MAX_CLOSED];
static int nclosed;

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake_closed(void)
{
	long long now = mono_ms();
	for (int i = nclosed - 1; i >= 0; i--) {
		struct conn *c = &closed[i].c;
		if (ring_load(c, 384))
			ring_wake(c, 256);
		if (ring_load(c, 192))
			ring_wake(c, 64);
		if (now >= closed[i].until) {
			munmap(c->base, c->len);
			closed[i] = closed[--nclosed];
		}
	}
}

static void drop_conn(struct conn *c)
{
	close(c->fd);
	if (c->base != NULL) {
		ring_wake(c, 64), ring_wake(c, 256);
		if (nclosed < MAX_CLOSED) {
			closed[nclosed].c = *c;
			closed[nclosed++].until = mono_ms() + 1000;
		} else {
			munmap(c->base, c->len);
		}
	}
	memset(c, 0, sizeof *c);
}

static void *daemon_main(void *arg)
{
	(void)arg;
	struct pollfd p[MAX_CONNS + 1];
	struct conn conns[MAX_CONNS + 1];
	int n = 1;
	p[0].fd = listen_fd;
	p[0].events = POLLIN;
	for (;;) {
		struct conn *ring = NULL;
		for (int i = 1; i < n && ring == NULL; i++)
			if (conns[i].base != NULL)
				ring = &conns[i];
		wake_closed();
		int k = poll(p, (nfds_t)n, ring ? 0 : nclosed > 0 ? 1 : -1);
		if (k < 0)
			continue;
		if (k == 0 && ring != NULL) {
			/* Nothing on the sockets: sleep on the first ring's
			 * request head, which the module wakes when it sees the
			 * flag, for a millisecond at most (other rings, other
			 * sockets). */
			uint32_t head = ring_load(ring, 0);
			ring_store(ring, 128, 1);
			if (head == ring->req_tail) {
				struct timespec ts = {0, 1000000};
				syscall(SYS_futex, ring_word(ring, 0), FUTEX_WAIT, head, &ts, NULL, 0);
			}
			ring_store(ring, 128, 0);
		}
		for (int i = n - 1; i >= 1; i--) {
			int ret = 0;
			if (p[i].revents != 0)
				ret = serve_socket(&conns[i]);
			if (ret == 0 && conns[i].base != NULL)
				ret = serve_ring(&conns[i]);
			if (ret < 0) {
				drop_conn(&conns[i]);
				p[i] = p[n - 1];
				conns[i] = conns[n - 1];
				n--;
			}
		}
		if ((p[0].revents & POLLIN) && n <= MAX_CONNS) {
			int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				p[n].fd = c;
				p[n].events = POLLIN;
				p[n].revents = 0;
				memset(&conns[n], 0, sizeof conns[n]);
				conns[n].fd = c;
				n++;
			}
		}
	}
	return NULL;
}

/* ---- the application ---- */

static CK_FUNCTION_LIST_3_2 *f;

/* must aborts where the module broke a promise to its caller. */
#define must(cond)                                                                       \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "fuzz_module.c:%d: %s\n", __LINE__, #cond);      \
			abort();                                                         \
		}                                                                        \
	} while (0)

/* out_call checks a size-query output: CKR_OK with a buffer never reports
 * more than the buffer held. */
#define OUT_OK(rv, buf, len, cap) must((rv) != CKR_OK || (buf) == NULL || (len) <= (cap))

static CK_ULONG clamp(CK_ULONG n, CK_ULONG max)
{
	return n > max ? max : n;
}

static void get_attrs(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	CK_ULONG *cls = malloc(sizeof(CK_ULONG));
	CK_BYTE *label = malloc(5);
	CK_ATTRIBUTE *inner = malloc(3 * sizeof(CK_ATTRIBUTE));
	CK_BYTE *iv0 = malloc(4), *iv1 = malloc(1), *iv2 = malloc(56);
	memset(iv2, 0xbe, 56); /* room for two CK_ATTRIBUTEs, if taken for them */
	CK_ULONG *mechs = malloc(2 * sizeof(CK_ULONG));
	inner[0] = (CK_ATTRIBUTE){CKA_CLASS, iv0, 4};
	inner[1] = (CK_ATTRIBUTE){CKA_LABEL, iv1, 1};
	inner[2] = (CK_ATTRIBUTE){CKA_ID, iv2, 56};
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, cls, sizeof(CK_ULONG)},
		{CKA_LABEL, label, 5},
		{CKA_VALUE, NULL, 0},
		{CKA_WRAP_TEMPLATE, inner, 3 * sizeof(CK_ATTRIBUTE)},
		{CKA_ALLOWED_MECHANISMS, mechs, 2 * sizeof(CK_ULONG)},
		{CKA_UNWRAP_TEMPLATE, NULL, 0},
	};
	CK_ULONG caps[] = {sizeof(CK_ULONG), 5, 0, 3 * sizeof(CK_ATTRIBUTE), 2 * sizeof(CK_ULONG), 0};
	CK_ULONG icaps[] = {4, 1, 56};
	CK_RV rv = f->C_GetAttributeValue(s, o, t, 6);
	if (rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
	    rv == CKR_BUFFER_TOO_SMALL) {
		for (int i = 0; i < 6; i++) {
			must(t[i].pValue == NULL || t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION ||
			     t[i].ulValueLen <= caps[i]);
			/* CKR_OK: every attribute answered. */
			must(rv != CKR_OK || t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION);
		}
		for (int i = 0; i < 3; i++)
			must(inner[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || inner[i].ulValueLen <= icaps[i]);
	}
	/* The length of a template attribute, then the whole of it. */
	CK_ATTRIBUTE q = {CKA_WRAP_TEMPLATE, NULL, 0};
	rv = f->C_GetAttributeValue(s, o, &q, 1);
	if (rv == CKR_OK && q.ulValueLen != CK_UNAVAILABLE_INFORMATION && q.ulValueLen > 0) {
		CK_ULONG k = clamp(q.ulValueLen / sizeof(CK_ATTRIBUTE), 4);
		CK_ATTRIBUTE *a = calloc(k + 1, sizeof(CK_ATTRIBUTE));
		for (CK_ULONG i = 0; i < k; i++)
			a[i].pValue = NULL;
		q.pValue = a;
		q.ulValueLen = k * sizeof(CK_ATTRIBUTE);
		rv = f->C_GetAttributeValue(s, o, &q, 1);
		must(rv != CKR_OK || q.ulValueLen == CK_UNAVAILABLE_INFORMATION || q.ulValueLen <= k * sizeof(CK_ATTRIBUTE));
		free(a);
	}
	free(cls), free(label), free(inner), free(iv0), free(iv1), free(iv2), free(mechs);
}

/* sized runs a size query, then the call with a buffer of the size
 * reported (at most 64 bytes). */
#define SIZED(call_with)                                                         \
	do {                                                                     \
		CK_ULONG len_ = 0;                                               \
		CK_BYTE *out_ = NULL;                                            \
		CK_RV rv_ = call_with;                                           \
		if (rv_ == CKR_OK) {                                             \
			CK_ULONG cap_ = clamp(len_, 64);                         \
			out_ = malloc(cap_ ? cap_ : 1);                          \
			len_ = cap_;                                             \
			rv_ = call_with;                                         \
			OUT_OK(rv_, out_, len_, cap_);                           \
			free(out_);                                              \
		}                                                                \
	} while (0)

static void run(void)
{
	CK_RV rv = f->C_Initialize(NULL);
	if (rv != CKR_OK) {
		fprintf(stderr, "C_Initialize: 0x%lx\n", (unsigned long)rv);
		abort();
	}
	CK_ULONG n = 0;
	rv = f->C_GetSlotList(CK_FALSE, NULL, &n);
	CK_ULONG cap = rv == CKR_OK ? clamp(n, 4) : 2;
	CK_SLOT_ID *slots = malloc((cap ? cap : 1) * sizeof(CK_SLOT_ID));
	n = cap;
	rv = f->C_GetSlotList(CK_TRUE, slots, &n);
	OUT_OK(rv, slots, n, cap);
	CK_SLOT_ID slot = rv == CKR_OK && n > 0 ? slots[0] : 1;
	free(slots);

	CK_SLOT_INFO si;
	f->C_GetSlotInfo(slot, &si);
	CK_TOKEN_INFO ti;
	f->C_GetTokenInfo(slot, &ti);

	rv = f->C_GetMechanismList(slot, NULL, &n);
	cap = rv == CKR_OK ? clamp(n, 8) : 3;
	CK_MECHANISM_TYPE *mechs = malloc((cap ? cap : 1) * sizeof(CK_MECHANISM_TYPE));
	n = cap;
	rv = f->C_GetMechanismList(slot, mechs, &n);
	OUT_OK(rv, mechs, n, cap);
	free(mechs);
	CK_MECHANISM_INFO mi;
	f->C_GetMechanismInfo(slot, CKM_RSA_PKCS, &mi);

	CK_SESSION_HANDLE s = 0;
	f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	CK_SESSION_INFO ssi;
	f->C_GetSessionInfo(s, &ssi);
	f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4);

	CK_OBJECT_CLASS kc = CKO_PRIVATE_KEY;
	CK_ATTRIBUTE ft[] = {{CKA_CLASS, &kc, sizeof kc}};
	f->C_FindObjectsInit(s, ft, 1);
	CK_OBJECT_HANDLE *hs = malloc(3 * sizeof(CK_OBJECT_HANDLE));
	n = 0;
	rv = f->C_FindObjects(s, hs, 3, &n);
	must(rv != CKR_OK || n <= 3);
	CK_OBJECT_HANDLE key = rv == CKR_OK && n > 0 ? hs[0] : 5;
	rv = f->C_FindObjects(s, hs, 1, &n);
	must(rv != CKR_OK || n <= 1);
	free(hs);
	f->C_FindObjectsFinal(s);

	get_attrs(s, key);

	CK_BYTE data[32] = "to be signed, to be encrypted.";
	CK_MECHANISM sm = {CKM_SHA256_RSA_PKCS, NULL, 0};
	f->C_SignInit(s, &sm, key);
	SIZED(f->C_Sign(s, data, sizeof data, out_, &len_));
	f->C_SignInit(s, &sm, key);
	f->C_SignUpdate(s, data, 8);
	SIZED(f->C_SignFinal(s, out_, &len_));

	CK_BYTE iv[16] = {0};
	CK_MECHANISM em = {CKM_AES_CBC_PAD, iv, sizeof iv};
	f->C_EncryptInit(s, &em, key);
	SIZED(f->C_Encrypt(s, data, sizeof data, out_, &len_));
	f->C_EncryptInit(s, &em, key);
	SIZED(f->C_EncryptUpdate(s, data, sizeof data, out_, &len_));
	SIZED(f->C_EncryptFinal(s, out_, &len_));
	f->C_DigestInit(s, &sm);
	SIZED(f->C_Digest(s, data, sizeof data, out_, &len_));

	CK_MECHANISM gm = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	CK_ULONG bits = 2048;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE pub[] = {{CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_VERIFY, &yes, 1}};
	CK_ATTRIBUTE priv[] = {{CKA_SIGN, &yes, 1}, {CKA_TOKEN, &yes, 1}};
	CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
	f->C_GenerateKeyPair(s, &gm, pub, 2, priv, 2, &hpub, &hpriv);

	CK_MECHANISM wm = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	SIZED(f->C_WrapKey(s, &wm, key, hpriv, out_, &len_));
	CK_OBJECT_HANDLE unwrapped = 0;
	f->C_UnwrapKey(s, &wm, key, data, sizeof data, priv, 2, &unwrapped);

	CK_BYTE *rnd = malloc(7);
	f->C_GenerateRandom(s, rnd, 7);
	free(rnd);

	/* 3.0 messages: a GCM encryption writes back its IV and tag. */
	CK_BYTE *giv = malloc(12), *tag = malloc(16);
	CK_GCM_MESSAGE_PARAMS gp = {giv, 12, 0, CKG_GENERATE_RANDOM, tag, 128};
	CK_MECHANISM mm = {CKM_AES_GCM, NULL, 0};
	f->C_MessageEncryptInit(s, &mm, key);
	{
		CK_ULONG len_ = 0;
		CK_BYTE *out_ = NULL;
		rv = f->C_EncryptMessage(s, &gp, sizeof gp, NULL, 0, data, sizeof data, NULL, &len_);
		if (rv == CKR_OK) {
			CK_ULONG cap_ = clamp(len_, 64);
			out_ = malloc(cap_ ? cap_ : 1);
			len_ = cap_;
			rv = f->C_EncryptMessage(s, &gp, sizeof gp, NULL, 0, data, sizeof data, out_, &len_);
			OUT_OK(rv, out_, len_, cap_);
			free(out_);
		}
	}
	f->C_MessageEncryptFinal(s);
	free(giv), free(tag);

	/* 3.2 */
	CK_MECHANISM km = {CKM_ML_KEM, NULL, 0};
	CK_OBJECT_HANDLE shared = 0;
	CK_ATTRIBUTE st[] = {{CKA_TOKEN, &yes, 1}};
	SIZED(f->C_EncapsulateKey(s, &km, hpub, st, 1, out_, &len_, &shared));
	f->C_DecapsulateKey(s, &km, hpriv, st, 1, data, sizeof data, &shared);
	CK_MECHANISM vm = {CKM_ML_DSA, NULL, 0};
	f->C_VerifySignatureInit(s, &vm, hpub, data, sizeof data);
	f->C_VerifySignature(s, data, 8);
	CK_FLAGS fl = 0;
	f->C_GetSessionValidationFlags(s, CKS_LAST_VALIDATION_OK, &fl);
	CK_MECHANISM am = {CKM_AES_GCM, NULL, 0};
	SIZED(f->C_WrapKeyAuthenticated(s, &am, key, hpriv, data, 4, out_, &len_));
	f->C_UnwrapKeyAuthenticated(s, &am, key, data, sizeof data, priv, 2, data, 4, &unwrapped);

	f->C_SessionCancel(s, CKF_SIGN);
	f->C_Logout(s);
	f->C_CloseSession(s);
	rv = f->C_Finalize(NULL);
	must(rv == CKR_OK);
}

static char dir[] = "/tmp/hsmemu-fuzz-XXXXXX";
static char path[sizeof dir + 16], conf[sizeof dir + 16];

static void cleanup(void)
{
	unlink(path);
	unlink(conf);
	rmdir(dir);
}

static void setup(void)
{
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(path, sizeof path, "%s/s", dir);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(listen_fd, 64) < 0)
		abort();
	setenv("HSMEMU_SOCKET", path, 1);
	/* A reply the ring's rewritten counters cut short is waited for
	 * until the call's timeout: one second, not the default. */
	snprintf(conf, sizeof conf, "%s/conf", dir);
	FILE *fp = fopen(conf, "w");
	if (fp == NULL)
		abort();
	fputs("timeout = 1\n", fp);
	fclose(fp);
	setenv("HSMEMU_CONFIG", conf, 1);
	atexit(cleanup);
	trace = getenv("FUZZ_TRACE") != NULL;
	pthread_t t;
	pthread_create(&t, NULL, daemon_main, NULL);
	pthread_detach(t);
	CK_VERSION v = {3, 2};
	CK_INTERFACE_PTR itf = NULL;
	if (C_GetInterface((CK_UTF8CHAR_PTR) "PKCS 11", &v, &itf, 0) != CKR_OK)
		abort();
	f = itf->pFunctionList;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (f == NULL)
		setup();
	/* Hello byte bit 4: the module offers rings, and they are taken. */
	int ring = size > 0 && (data[0] & 0x10);
	setenv("HSMEMU_TRANSPORT", ring ? "ring" : "socket", 1);
	pthread_mutex_lock(&in_mu);
	in_data = data, in_len = size, in_off = 0, in_ring = ring, in_cors = 0;
	pthread_mutex_unlock(&in_mu);
	run();
	pthread_mutex_lock(&in_mu);
	in_data = NULL, in_len = 0, in_off = 0;
	pthread_mutex_unlock(&in_mu);
	return 0;
}

#ifdef FUZZ_DRIVER
#include <dirent.h>

/* A deterministic mutation loop for machines without libFuzzer. */
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
	rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
	return rng;
}

static size_t mutate(uint8_t *b, size_t n, size_t max)
{
	int k = 1 + (int)(next() % 4);
	while (k-- > 0) {
		switch (next() % 6) {
		case 0: /* flip a bit */
			if (n > 0)
				b[next() % n] ^= (uint8_t)(1u << (next() % 8));
			break;
		case 1: /* an interesting byte */
			if (n > 0)
				b[next() % n] = (uint8_t[]){0, 1, 2, 3, 8, 0x10, 0x7f, 0x80, 0xff}[next() % 9];
			break;
		case 2: /* insert bytes */
			if (n < max) {
				size_t at = n ? next() % (n + 1) : 0, k2 = 1 + next() % 8;
				if (k2 > max - n)
					k2 = max - n;
				memmove(b + at + k2, b + at, n - at);
				for (size_t i = 0; i < k2; i++)
					b[at + i] = (uint8_t)next();
				n += k2;
			}
			break;
		case 3: /* delete bytes */
			if (n > 0) {
				size_t at = next() % n, k2 = 1 + next() % 8;
				if (k2 > n - at)
					k2 = n - at;
				memmove(b + at, b + at + k2, n - at - k2);
				n -= k2;
			}
			break;
		case 4: /* a big-endian u64 of 0, 1, a small count or all ones */
			if (n >= 8) {
				size_t at = next() % (n - 7);
				uint64_t v = (uint64_t[]){0, 1, 2, 3, 8, 64, 0xFFFFFFFF, ~0ull}[next() % 8];
				put64(b + at, v);
			}
			break;
		default: /* truncate */
			if (n > 0)
				n = next() % n;
		}
	}
	return n;
}

int main(int argc, char **argv)
{
	long runs = 0, max_time = 0;
	time_t start = time(NULL);
	enum { MAX = 4096 };
	static uint8_t seeds[64][MAX];
	static size_t seed_len[64];
	int nseeds = 0;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "-runs=", 6) == 0) {
			runs = atol(argv[i] + 6);
			continue;
		}
		if (strncmp(argv[i], "-max_total_time=", 16) == 0) {
			max_time = atol(argv[i] + 16);
			continue;
		}
		if (strncmp(argv[i], "-seed=", 6) == 0) {
			rng = strtoull(argv[i] + 6, NULL, 0) | 1;
			continue;
		}
		if (argv[i][0] == '-')
			continue; /* libFuzzer's flags */
		/* A file, or a directory of them (a libFuzzer corpus). */
		char path[4096];
		DIR *d = opendir(argv[i]);
		struct dirent *e = NULL;
		do {
			if (d != NULL) {
				if ((e = readdir(d)) == NULL)
					break;
				if (e->d_name[0] == '.')
					continue;
				snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
			} else {
				snprintf(path, sizeof path, "%s", argv[i]);
			}
			FILE *fp = fopen(path, "rb");
			if (fp == NULL)
				continue;
			/* Each runs; the first 64 are kept to mutate. */
			static uint8_t one[MAX];
			size_t n = fread(one, 1, MAX, fp);
			fclose(fp);
			LLVMFuzzerTestOneInput(one, n);
			if (nseeds < 64) {
				memcpy(seeds[nseeds], one, n);
				seed_len[nseeds++] = n;
			}
		} while (d != NULL);
		if (d != NULL)
			closedir(d);
	}
	if (nseeds == 0)
		seed_len[nseeds++] = 1; /* one zero byte: every reply CKR_GENERAL_ERROR */
	static uint8_t b[MAX];
	long r;
	for (r = 0; r < runs && (max_time <= 0 || time(NULL) - start < max_time); r++) {
		int s = (int)(next() % (uint64_t)nseeds);
		memcpy(b, seeds[s], seed_len[s]);
		size_t n = mutate(b, seed_len[s], MAX);
		LLVMFuzzerTestOneInput(b, n);
	}
	printf("fuzz-module: %d seeds, %ld mutated inputs\n", nseeds, r);
	return 0;
}
#endif
