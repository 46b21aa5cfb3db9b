/*
 * ring.c: the shared-memory transport (docs/protocol.md, "Rings"). After
 * the hello on the Unix socket, the module may offer the daemon a memfd
 * holding two byte rings, one for requests and one for replies, passed
 * over the socket with SCM_RIGHTS. When the daemon takes it, the
 * connection's frames go through the rings instead of the socket, as the
 * same byte stream (a frame longer than a ring simply passes in parts),
 * and each end sleeps on the other's counter with a shared futex. The
 * socket stays open and silent: it is how each end learns that the other
 * died (a waiting end looks at it every slice).
 *
 * A ring is known by its connection's socket descriptor, as a TLS
 * connection is (tls.c): conn.c asks hsm_ring_is and reads and writes
 * through here. The mapping is MADV_DONTFORK, so a forked child never
 * has the parent's rings at all, and forgets their entries
 * (hsm_ring_forget) without touching memory; and MADV_DONTDUMP, so that
 * the frames it still holds (PINs, key values, plaintext, until the next
 * frames overwrite them) stay out of the application's core dumps.
 *
 * Nothing the daemon writes is trusted: the module keeps its own copies
 * of the counters it owns and checks the daemon's against the ring size.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hsm.h"

/* The control page's words, each on a cache line of its own. "sleep" is
 * set by a consumer about to wait for data, "wsleep" by a producer about
 * to wait for room; the other end wakes the counter's futex when it sees
 * one set. */
enum {
	OFF_REQ_HEAD = 0,     /* written by the module */
	OFF_REQ_TAIL = 64,    /* written by the daemon */
	OFF_REQ_SLEEP = 128,  /* the daemon waits for requests on REQ_HEAD */
	OFF_REQ_WSLEEP = 192, /* the module waits for room on REQ_TAIL */
	OFF_REP_HEAD = 256,   /* written by the daemon */
	OFF_REP_TAIL = 320,   /* written by the module */
	OFF_REP_SLEEP = 384,  /* the module waits for replies on REP_HEAD */
	OFF_REP_WSLEEP = 448, /* the daemon waits for room on REP_TAIL */
	RING_CTRL = 4096,
};

#define RING_SIZE (32u << 10)  /* bytes of each ring */
#define RING_CALL 0xFFFFFF01u  /* the offer's call number, in no call table */
#define RING_SLICE_MS 250      /* how often a waiting end looks at the socket */
#define RING_MAX 64            /* rings at once: the pool's connections and a few dials */

struct ring {
	int fd; /* the connection's socket; -1: a free entry */
	uint8_t *base;
	size_t len;
	uint32_t size;
	uint32_t req_head, rep_tail; /* our counters: never read back from the ring */
};

static struct ring rings[RING_MAX] = {[0 ... RING_MAX - 1] = {.fd = -1}};
static int nrings; /* entries in use, to skip the lookup when none */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static uint32_t *word(const struct ring *r, int off) { return (uint32_t *)(r->base + off); }
static uint32_t load(const struct ring *r, int off) { return __atomic_load_n(word(r, off), __ATOMIC_SEQ_CST); }
static void store(const struct ring *r, int off, uint32_t v) { __atomic_store_n(word(r, off), v, __ATOMIC_SEQ_CST); }

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void futex_wake(uint32_t *w) { syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0); }

static void futex_wait(uint32_t *w, uint32_t val, int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	syscall(SYS_futex, w, FUTEX_WAIT, val, &ts, NULL, 0);
}

static struct ring *find(int fd)
{
	if (__atomic_load_n(&nrings, __ATOMIC_ACQUIRE) == 0)
		return NULL;
	/* An entry is written only by the thread that owns its connection,
	 * which is the one looking it up. */
	for (int i = 0; i < RING_MAX; i++)
		if (__atomic_load_n(&rings[i].fd, __ATOMIC_ACQUIRE) == fd)
			return &rings[i];
	return NULL;
}

int hsm_ring_is(int fd) { return find(fd) != NULL; }

/* wait_slice waits on the futex at off while it still holds val, for one
 * slice or until the deadline, then says whether the call goes on: the
 * socket must still be quiet (the daemon writes nothing on it once the
 * rings carry the frames, so anything there is its end), the deadline not
 * passed and C_Finalize not run. */
static enum hsm_io wait_slice(struct ring *r, int flag, int off, uint32_t val, long long deadline,
			      unsigned long epoch)
{
	int ms = RING_SLICE_MS;
	if (deadline >= 0) {
		long long left = deadline - now_ms();
		if (left <= 0)
			return HSM_IO_TIMEOUT;
		if (left < ms)
			ms = (int)left;
	}
	store(r, flag, 1);
	if (load(r, off) == val)
		futex_wait(word(r, off), val, ms);
	store(r, flag, 0);
	if (load(r, off) != val)
		return HSM_IO_OK;
	struct pollfd p = {.fd = r->fd, .events = POLLIN | POLLRDHUP};
	int k;
	do
		k = poll(&p, 1, 0);
	while (k < 0 && errno == EINTR);
	if (k != 0)
		return HSM_IO_BROKEN;
	if (deadline >= 0 && now_ms() >= deadline)
		return HSM_IO_TIMEOUT;
	if (epoch != 0 && hsm_epoch() != epoch)
		return HSM_IO_FINALIZED;
	return HSM_IO_OK;
}

enum hsm_io hsm_ring_send(int fd, const uint8_t *p, size_t n, long long deadline, unsigned long epoch)
{
	struct ring *r = find(fd);
	if (r == NULL)
		return HSM_IO_BROKEN;
	uint8_t *data = r->base + RING_CTRL;
	uint32_t mask = r->size - 1;
	while (n > 0) {
		uint32_t tail = load(r, OFF_REQ_TAIL);
		uint32_t used = r->req_head - tail;
		if (used > r->size)
			return HSM_IO_MALFORMED;
		if (used == r->size) {
			enum hsm_io io = wait_slice(r, OFF_REQ_WSLEEP, OFF_REQ_TAIL, tail, deadline, epoch);
			if (io != HSM_IO_OK)
				return io;
			continue;
		}
		uint32_t k = r->size - used;
		if (k > n)
			k = (uint32_t)n;
		uint32_t at = r->req_head & mask, first = r->size - at < k ? r->size - at : k;
		memcpy(data + at, p, first);
		memcpy(data, p + first, k - first);
		r->req_head += k;
		store(r, OFF_REQ_HEAD, r->req_head);
		if (load(r, OFF_REQ_SLEEP))
			futex_wake(word(r, OFF_REQ_HEAD));
		p += k;
		n -= k;
	}
	return HSM_IO_OK;
}

enum hsm_io hsm_ring_recv(int fd, uint8_t *p, size_t min, size_t cap, size_t *got, long long deadline,
			  unsigned long epoch)
{
	struct ring *r = find(fd);
	if (r == NULL)
		return HSM_IO_BROKEN;
	const uint8_t *data = r->base + RING_CTRL + r->size;
	uint32_t mask = r->size - 1;
	size_t have = 0;
	while (have < min) {
		uint32_t head = load(r, OFF_REP_HEAD);
		uint32_t avail = head - r->rep_tail;
		if (avail > r->size)
			return HSM_IO_MALFORMED;
		if (avail == 0) {
			enum hsm_io io = wait_slice(r, OFF_REP_SLEEP, OFF_REP_HEAD, head, deadline, epoch);
			if (io != HSM_IO_OK)
				return io;
			continue;
		}
		uint32_t k = avail;
		if (k > cap - have)
			k = (uint32_t)(cap - have);
		uint32_t at = r->rep_tail & mask, first = r->size - at < k ? r->size - at : k;
		memcpy(p + have, data + at, first);
		memcpy(p + have + first, data, k - first);
		r->rep_tail += k;
		have += k;
		store(r, OFF_REP_TAIL, r->rep_tail);
		if (load(r, OFF_REP_WSLEEP))
			futex_wake(word(r, OFF_REP_TAIL));
	}
	*got = have;
	return HSM_IO_OK;
}

int hsm_ring_pending(int fd)
{
	struct ring *r = find(fd);
	return r != NULL && load(r, OFF_REP_HEAD) != r->rep_tail;
}

static void drop(struct ring *r, int unmap)
{
	if (unmap)
		munmap(r->base, r->len);
	pthread_mutex_lock(&mu);
	__atomic_store_n(&r->fd, -1, __ATOMIC_RELEASE);
	r->base = NULL;
	__atomic_sub_fetch(&nrings, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&mu);
}

void hsm_ring_close(int fd)
{
	struct ring *r = find(fd);
	if (r != NULL)
		drop(r, 1);
}

void hsm_ring_forget(int fd)
{
	/* MADV_DONTFORK: the child has no mapping there; whatever it mapped
	 * since at that address is not ours to unmap. */
	struct ring *r = find(fd);
	if (r != NULL)
		drop(r, 0);
}

/* make_ring creates the memfd, sealed so that it can never shrink under
 * the daemon (a page cut off would be a SIGBUS there), and maps it. */
static int make_ring(uint8_t **base, size_t *len)
{
	int m = memfd_create("hsmemu-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (m < 0)
		return -1;
	size_t n = RING_CTRL + 2 * (size_t)RING_SIZE;
	if (ftruncate(m, (off_t)n) != 0 || fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
		close(m);
		return -1;
	}
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	if (p == MAP_FAILED) {
		close(m);
		return -1;
	}
	if (madvise(p, n, MADV_DONTFORK) != 0) {
		munmap(p, n);
		close(m);
		return -1;
	}
	/* The rings keep the last frames that went through them (PINs, key
	 * values, plaintext), and a shared mapping is in a core dump by
	 * default (coredump_filter bit 1): leave it out. Linux has had
	 * MADV_DONTDUMP since 3.4; a kernel that refused it would cost only
	 * that, not the rings. */
	(void)madvise(p, n, MADV_DONTDUMP);
	*base = p;
	*len = n;
	return m;
}

/* send_offer sends the offer frame with the memfd attached, or with
 * none when m < 0 (which the daemon declines). */
static int send_offer(int fd, int m)
{
	uint8_t f[20];
	hsm_put_be32(f, 16);
	hsm_put_be32(f + 4, 0); /* request id */
	hsm_put_be32(f + 8, RING_CALL);
	hsm_put_be32(f + 12, RING_SIZE);
	hsm_put_be32(f + 16, 0);
	struct iovec iov = {f, sizeof f};
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} c;
	memset(&c, 0, sizeof c);
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof c.b};
	if (m >= 0) {
		struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &m, sizeof m);
	} else {
		msg.msg_control = NULL;
		msg.msg_controllen = 0;
	}
	ssize_t k;
	do
		k = sendmsg(fd, &msg, MSG_NOSIGNAL);
	while (k < 0 && errno == EINTR);
	return k == (ssize_t)sizeof f ? 0 : -1;
}

/* read_answer reads the offer's reply, 17 bytes, on a socket with a
 * kernel timeout of one slice; rv 0 takes the ring. */
static enum hsm_io read_answer(int fd, long long deadline, int *taken)
{
	uint8_t a[17];
	size_t have = 0;
	while (have < sizeof a) {
		ssize_t k = recv(fd, a + have, sizeof a - have, 0);
		if (k > 0) {
			have += (size_t)k;
			continue;
		}
		if (k == 0)
			return HSM_IO_BROKEN;
		if (errno == EINTR)
			continue;
		if ((errno == EAGAIN || errno == EWOULDBLOCK) && now_ms() < deadline)
			continue;
		return HSM_IO_BROKEN;
	}
	/* length 13, request id 0, rv, flags 0: anything else is not a reply
	 * to the offer. */
	if (hsm_be32(a) != 13 || hsm_be32(a + 4) != 0 || a[16] != 0)
		return HSM_IO_MALFORMED;
	*taken = hsm_be64(a + 8) == CKR_OK;
	return HSM_IO_OK;
}

enum hsm_io hsm_ring_offer(int fd, long long deadline)
{
	uint8_t *base = NULL;
	size_t len = 0;
	/* The hello announced an offer, so one goes even when no memfd
	 * could be made (a sandbox without memfd_create): an offer without
	 * a descriptor, which the daemon declines. */
	int m = make_ring(&base, &len);
	int ok = send_offer(fd, m);
	if (m >= 0)
		close(m); /* the daemon has its own descriptor now, and we the mapping */
	int taken = 0;
	enum hsm_io io = ok == 0 ? read_answer(fd, deadline, &taken) : HSM_IO_BROKEN;
	if (io != HSM_IO_OK || !taken || m < 0) {
		if (base != NULL)
			munmap(base, len);
		if (io == HSM_IO_OK && taken)
			return HSM_IO_BROKEN; /* taken, but there is nothing to take */
		return io; /* declined: the socket carries the frames */
	}
	pthread_mutex_lock(&mu);
	struct ring *r = NULL;
	for (int i = 0; i < RING_MAX && r == NULL; i++)
		if (rings[i].fd < 0 && rings[i].base == NULL)
			r = &rings[i];
	if (r != NULL) {
		r->base = base;
		r->len = len;
		r->size = RING_SIZE;
		r->req_head = 0;
		r->rep_tail = 0;
		__atomic_add_fetch(&nrings, 1, __ATOMIC_RELEASE);
		__atomic_store_n(&r->fd, fd, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&mu);
	if (r == NULL) {
		/* The daemon reads the ring now: no way back to the socket. */
		munmap(base, len);
		return HSM_IO_BROKEN;
	}
	return HSM_IO_OK;
}

/* A forked child has none of the parent's mappings (MADV_DONTFORK): every
 * entry goes, whichever thread of the parent was using it, before any of
 * their descriptor numbers can come back for a new connection. */
void hsm_ring_atfork_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	mu = fresh;
	for (int i = 0; i < RING_MAX; i++) {
		rings[i].fd = -1;
		rings[i].base = NULL;
	}
	nrings = 0;
}
