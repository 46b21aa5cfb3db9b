/*
 * conn.c: one connection to the daemon: dial and hello, send a frame, read
 * a frame. Sockets are close-on-exec. The dial and the hello run
 * non-blocking, every wait a poll() with a deadline. After the hello the
 * socket turns blocking with kernel timeouts (SO_RCVTIMEO, SO_SNDTIMEO) of
 * one slice: a call is then one send() and, most often, one recv(), and a
 * daemon that stopped answering still costs a call its timeout, never the
 * application a hang. Writes use MSG_NOSIGNAL: a daemon that went away is
 * EPIPE, not SIGPIPE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hsm.h"

#define HELLO_TIMEOUT_MS 5000
#define POLL_SLICE_MS 250 /* how often a waiting call looks at the epoch */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Why a dial did not reach the daemon, said once per kind in a process:
 * no daemon listens, the socket's permissions keep this user out, or the
 * daemon refused this process's hello (its peer credentials). An
 * application sees only an empty slot, so this line is how a user learns
 * to start the daemon or to join its group. */
enum { UNREACHABLE_NO_SOCKET, UNREACHABLE_NO_DAEMON, UNREACHABLE_DENIED, UNREACHABLE_REFUSED };
static unsigned reported;

static void report_unreachable(int kind, const char *socket, int err)
{
	unsigned bit = 1u << kind;
	if (__atomic_fetch_or(&reported, bit, __ATOMIC_RELAXED) & bit)
		return;
	char msg[640];
	switch (kind) {
	case UNREACHABLE_NO_SOCKET:
		snprintf(msg, sizeof msg, "hsmemu-pkcs11: no socket path: set HSMEMU_SOCKET or socket = in module.conf; "
			 "the slot shows no token");
		break;
	case UNREACHABLE_NO_DAEMON:
		snprintf(msg, sizeof msg, "hsmemu-pkcs11: no daemon at %s (%s): start it (systemctl start hsmemu, or "
			 "hsmemu serve); until then the slot shows no token", socket, strerror(err));
		break;
	case UNREACHABLE_DENIED:
		snprintf(msg, sizeof msg, "hsmemu-pkcs11: the daemon's socket %s refused this user (%s): add the user to "
			 "the socket's group (usermod -aG hsmemu USER) and log in again", socket, strerror(err));
		break;
	default:
		snprintf(msg, sizeof msg, "hsmemu-pkcs11: the daemon at %s refused this process (uid %u): it lets in its "
			 "own user, root and its socket's group (usermod -aG hsmemu USER, then log in again)",
			 socket, (unsigned)getuid());
	}
	hsm_log_note(msg);
}

/* wait_fd polls fd for events until the deadline (< 0: none), giving up
 * early when the library's epoch moves (C_Finalize). */
static enum hsm_io wait_fd(int fd, short events, long long deadline, unsigned long epoch)
{
	for (;;) {
		int slice = POLL_SLICE_MS;
		if (deadline >= 0) {
			long long left = deadline - now_ms();
			if (left <= 0)
				return HSM_IO_TIMEOUT;
			if (left < slice)
				slice = (int)left;
		}
		struct pollfd p = {.fd = fd, .events = events};
		int k = poll(&p, 1, slice);
		if (k < 0 && errno != EINTR)
			return HSM_IO_BROKEN;
		if (k > 0)
			return HSM_IO_OK; /* readable, writable, or hung up: the I/O says */
		if (epoch != 0 && hsm_epoch() != epoch)
			return HSM_IO_FINALIZED;
	}
}

/* slice_over is what a blocking socket's EAGAIN means: one slice of its
 * kernel timeout went by. Give up at the deadline or on C_Finalize. */
static enum hsm_io slice_over(long long deadline, unsigned long epoch)
{
	if (deadline >= 0 && now_ms() >= deadline)
		return HSM_IO_TIMEOUT;
	if (epoch != 0 && hsm_epoch() != epoch)
		return HSM_IO_FINALIZED;
	return HSM_IO_OK;
}

/* wait_more waits for fd after EAGAIN: a poll on a non-blocking socket, or
 * nothing more on a blocking one, whose recv or send already waited. */
static enum hsm_io wait_more(int fd, short events, long long deadline, unsigned long epoch)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		return slice_over(deadline, epoch);
	return wait_fd(fd, events, deadline, epoch);
}

static enum hsm_io send_all(int fd, const uint8_t *p, size_t n, long long deadline, unsigned long epoch)
{
	if (hsm_ring_is(fd))
		return hsm_ring_send(fd, p, n, deadline, epoch);
	int tls = hsm_tls_is(fd);
	while (n > 0) {
		ssize_t k = tls ? hsm_tls_send(fd, p, n) : send(fd, p, n, MSG_NOSIGNAL);
		if (k > 0) {
			p += k;
			n -= (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			enum hsm_io io = wait_more(fd, POLLOUT, deadline, epoch);
			if (io != HSM_IO_OK)
				return io;
			continue;
		}
		return HSM_IO_BROKEN; /* EPIPE, ECONNRESET, ... */
	}
	return HSM_IO_OK;
}

/* recv_some reads at least min and at most cap bytes into p; *got says how
 * many came. */
static enum hsm_io recv_some(int fd, uint8_t *p, size_t min, size_t cap, size_t *got,
			     long long deadline, unsigned long epoch)
{
	if (hsm_ring_is(fd))
		return hsm_ring_recv(fd, p, min, cap, got, deadline, epoch);
	size_t have = 0;
	int tls = hsm_tls_is(fd);
	while (have < min) {
		ssize_t k = tls ? hsm_tls_recv(fd, p + have, cap - have) : recv(fd, p + have, cap - have, 0);
		if (k > 0) {
			have += (size_t)k;
			continue;
		}
		if (k == 0)
			return HSM_IO_BROKEN; /* EOF: the daemon closed */
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			enum hsm_io io = wait_more(fd, POLLIN, deadline, epoch);
			if (io != HSM_IO_OK)
				return io;
			continue;
		}
		return HSM_IO_BROKEN;
	}
	*got = have;
	return HSM_IO_OK;
}

static enum hsm_io recv_all(int fd, uint8_t *p, size_t n, long long deadline, unsigned long epoch)
{
	size_t got;
	return recv_some(fd, p, n, n, &got, deadline, epoch);
}

/* handle_epoch goes in every hello (31 bits of it, above the ring bit):
 * the daemon numbers the handles of an application it starts afresh from
 * it (epoch << 32 | n), so the handles
 * of an application it no longer holds (it restarted, every connection
 * broke, another node took over) never come back naming new sessions or
 * objects: they stay invalid. Moved on by every hello that found the
 * application fresh (dials are serialised, pool.c); never reset, so a
 * re-initialised or forked application's handles differ from its earlier
 * ones too. The first application of a process has epoch 0, the handles
 * a daemon always gave. */
static uint32_t handle_epoch;

/* hello opens the connection speaking version 6, or the older one a
 * daemon that speaks no more names (*version says which). *fresh: the
 * daemon holds nothing of this application from before (version 1 cannot
 * say, so yes). A daemon that wants an older version closes the
 * connection: HSM_IO_BROKEN then asks for a new one. server: the remote
 * daemon's index (tls.c), or -1 for the Unix socket. ring: a ring offer
 * follows an accepted hello (ring.c), which the last word's bit 0 tells
 * the daemon; a daemon that does not know the bit ignores it and
 * declines the offer as an unknown call. */
static enum hsm_io hello(int fd, int *version, int *fresh, int server, int ring)
{
	uint8_t h[32], r[8];
	memcpy(h, "HSMU", 4);
	h[4] = 0, h[5] = (uint8_t)*version;
	h[6] = 0, h[7] = 0; /* flags */
	memcpy(h + 8, hsm_app_id(), 16);
	hsm_put_be32(h + 24, (uint32_t)getpid());
	/* The last word: the handle epoch above its bit 0, the ring offer. */
	uint32_t epoch = __atomic_load_n(&handle_epoch, __ATOMIC_ACQUIRE) & 0x7fffffff;
	hsm_put_be32(h + 28, epoch << 1 | (ring ? 1 : 0));

	long long deadline = now_ms() + HELLO_TIMEOUT_MS;
	if (send_all(fd, h, sizeof h, deadline, 0) != HSM_IO_OK)
		return HSM_IO_UNAVAILABLE;
	if (recv_all(fd, r, sizeof r, deadline, 0) != HSM_IO_OK)
		return HSM_IO_UNAVAILABLE;
	if (memcmp(r, "HSMU", 4) != 0 || r[4] != 0 || r[6] != 0) {
		if (server >= 0)
			hsm_tls_not_hsmemu(server);
		return HSM_IO_UNAVAILABLE; /* not our daemon */
	}
	/* Status 1, version not supported, names the daemon's highest. */
	if (r[7] == 1 && r[5] >= 1 && r[5] < *version) {
		*version = r[5];
		return HSM_IO_BROKEN;
	}
	/* Refused: this process's user (or certificate) may not use the daemon. */
	if (r[7] == 2) {
		if (server >= 0)
			hsm_tls_refused(server);
		else
			report_unreachable(UNREACHABLE_REFUSED, hsm_config_get()->socket, 0);
		return HSM_IO_UNAVAILABLE;
	}
	/* A version we did not ask for: as if no daemon ran. */
	if (r[5] != *version || !(r[7] == 0 || (r[7] == 3 && *version >= 2))) {
		if (server >= 0)
			hsm_tls_refused(server);
		return HSM_IO_UNAVAILABLE;
	}
	*fresh = r[7] == 0;
	if (*fresh)
		__atomic_add_fetch(&handle_epoch, 1, __ATOMIC_RELEASE);
	return HSM_IO_OK;
}

/* report_connect says why connect() failed, when it is no daemon or a
 * permission; anything else is left to the call's CK_RV. */
static void report_connect(const char *socket, int err)
{
	if (err == ENOENT || err == ECONNREFUSED || err == ENOTDIR)
		report_unreachable(UNREACHABLE_NO_DAEMON, socket, err);
	else if (err == EACCES || err == EPERM)
		report_unreachable(UNREACHABLE_DENIED, socket, err);
}

/* connect_fd connects a new non-blocking socket to the daemon. */
static enum hsm_io connect_fd(const struct sockaddr_un *sa, int *out)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return errno == ENOMEM || errno == ENOBUFS ? HSM_IO_NOMEM : HSM_IO_UNAVAILABLE;

	/* A Unix socket connects at once or fails; EAGAIN means the daemon's
	 * backlog is full for now, so try again shortly, within the hello's
	 * deadline. */
	long long deadline = now_ms() + HELLO_TIMEOUT_MS;
	for (;;) {
		if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EINPROGRESS) {
			int err = 0;
			socklen_t len = sizeof err;
			if (wait_fd(fd, POLLOUT, deadline, 0) != HSM_IO_OK ||
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
				close(fd);
				if (err != 0)
					report_connect(sa->sun_path, err);
				return HSM_IO_UNAVAILABLE;
			}
			break;
		}
		if (errno == EAGAIN && now_ms() < deadline) {
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
			continue;
		}
		int err = errno;
		close(fd);
		report_connect(sa->sun_path, err);
		return HSM_IO_UNAVAILABLE;
	}
	*out = fd;
	return HSM_IO_OK;
}

/* The version to open with: 6, or an older one once a daemon asked for
 * it; kept until the next C_Initialize (hsm_conn_init), so each dial to an
 * older daemon costs one hello, and a re-initialised application tries
 * the newest version again. */
#define DIAL_NEWEST 6
static int dial_version = DIAL_NEWEST;

void hsm_conn_init(void) { __atomic_store_n(&dial_version, DIAL_NEWEST, __ATOMIC_RELAXED); }

/* dial_tls dials the remote daemons: the one that served last first,
 * then each other in turn (failover), all within one call timeout. A
 * server that does not answer gets its share of it, so that the next
 * one still has time. */
static enum hsm_io dial_tls(int n, int *out, int *fresh, int *version_out)
{
	const hsm_config *cfg = hsm_config_get();
	int budget = cfg->timeout_ms > 0 ? cfg->timeout_ms : HELLO_TIMEOUT_MS;
	long long end = now_ms() + budget;
	int share = budget / n > 1000 ? budget / n : 1000;
	int first = hsm_tls_current();
	enum hsm_io io = HSM_IO_UNAVAILABLE;
	for (int k = 0; k < n && now_ms() < end; k++) {
		int i = (first + k) % n;
		long long deadline = now_ms() + share;
		if (deadline > end)
			deadline = end;
		int fd, version = __atomic_load_n(&dial_version, __ATOMIC_RELAXED);
		io = hsm_tls_connect(i, deadline, &fd);
		if (io != HSM_IO_OK)
			continue;
		io = hello(fd, &version, fresh, i, 0);
		if (io == HSM_IO_BROKEN) {
			/* A daemon of version 1: again, speaking it. */
			hsm_tls_close(fd);
			__atomic_store_n(&dial_version, version, __ATOMIC_RELAXED);
			if (hsm_tls_connect(i, deadline, &fd) != HSM_IO_OK)
				continue;
			io = hello(fd, &version, fresh, i, 0);
		}
		if (io != HSM_IO_OK) {
			hsm_tls_close(fd);
			io = HSM_IO_UNAVAILABLE;
			continue;
		}
		hsm_tls_set_current(i);
		*out = fd;
		*version_out = version;
		return HSM_IO_OK;
	}
	return io == HSM_IO_NOMEM ? io : HSM_IO_UNAVAILABLE;
}

/* blocking turns a dialled socket blocking, with one slice of kernel
 * timeout. */
static int blocking(int fd)
{
	struct timeval slice = {0, POLL_SLICE_MS * 1000};
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0 &&
	       setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) == 0 &&
	       setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &slice, sizeof slice) == 0;
}

void hsm_conn_close(int fd)
{
	hsm_ring_close(fd);
	if (hsm_tls_is(fd))
		hsm_tls_close(fd);
	else
		close(fd);
}

void hsm_conn_forget(int fd)
{
	hsm_ring_forget(fd);
	if (hsm_tls_is(fd))
		hsm_tls_forget(fd);
	else
		close(fd);
}

enum hsm_io hsm_conn_dial(int *out, int *fresh, int *version_out)
{
	const hsm_config *cfg = hsm_config_get();
	struct sockaddr_un sa;

	int remote = hsm_tls_servers();
	if (remote < 0)
		return HSM_IO_UNAVAILABLE; /* a server list with no usable server */
	if (remote > 0) {
		int fd;
		enum hsm_io io = dial_tls(remote, &fd, fresh, version_out);
		if (io != HSM_IO_OK)
			return io;
		if (!blocking(fd)) {
			hsm_tls_close(fd);
			return HSM_IO_UNAVAILABLE;
		}
		*out = fd;
		return HSM_IO_OK;
	}

	if (cfg->socket[0] == '\0') {
		report_unreachable(UNREACHABLE_NO_SOCKET, "", 0);
		return HSM_IO_UNAVAILABLE;
	}
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, cfg->socket, sizeof sa.sun_path);

	int fd, version = __atomic_load_n(&dial_version, __ATOMIC_RELAXED);
	enum hsm_io io;
	for (;;) {
		io = connect_fd(&sa, &fd);
		if (io != HSM_IO_OK)
			return io;
		io = hello(fd, &version, fresh, -1, cfg->ring);
		if (io == HSM_IO_OK)
			break;
		close(fd);
		if (io != HSM_IO_BROKEN)
			return io;
		/* An older daemon: again, speaking its version. */
		__atomic_store_n(&dial_version, version, __ATOMIC_RELAXED);
	}
	*version_out = version;
	/* From here on, blocking with one slice of kernel timeout. */
	if (!blocking(fd)) {
		close(fd);
		return HSM_IO_UNAVAILABLE;
	}
	/* Declined, the socket carries the frames; broken, no connection. */
	if (cfg->ring && hsm_ring_offer(fd, now_ms() + HELLO_TIMEOUT_MS) != HSM_IO_OK) {
		close(fd);
		return HSM_IO_UNAVAILABLE;
	}
	*out = fd;
	return HSM_IO_OK;
}

enum hsm_io hsm_conn_send(int fd, const uint8_t *p, size_t n, unsigned long epoch)
{
	const hsm_config *cfg = hsm_config_get();
	long long deadline = cfg->timeout_ms > 0 ? now_ms() + cfg->timeout_ms : -1;
	return send_all(fd, p, n, deadline, epoch);
}

/* A reply that fits here arrives with one recv(); a larger one takes a
 * second for the rest. The buffer is on the caller's stack, which a core
 * dump holds too: what came through it is wiped before it returns. */
#define FIRST_READ 4096

enum hsm_io hsm_conn_recv_frames(int fd, int n, uint8_t **frames, uint32_t *lens, int timeout_ms,
				 unsigned long epoch)
{
	long long deadline = timeout_ms > 0 ? now_ms() + timeout_ms : -1;
	uint8_t buf[FIRST_READ];
	size_t have = 0, off = 0; /* buf[off:have] came and is not yet used */
	size_t top = 0;           /* buf[:top] has held reply bytes */
	enum hsm_io io = HSM_IO_OK;
	int i;

	for (i = 0; i < n; i++)
		frames[i] = NULL;
	for (i = 0; i < n; i++) {
		if (have - off < 4) {
			/* At least the length; whatever else has come with it. */
			memmove(buf, buf + off, have - off);
			have -= off;
			off = 0;
			size_t got;
			io = recv_some(fd, buf + have, 4 - have, sizeof buf - have, &got, deadline, epoch);
			if (io != HSM_IO_OK)
				break;
			have += got;
			if (have > top)
				top = have;
		}
		uint32_t len = hsm_be32(buf + off);
		off += 4;
		/* request id u32, rv u64, flags u8 at least; 16 MiB at most. */
		if (len < 13 || len > HSM_MAX_FRAME) {
			io = HSM_IO_MALFORMED;
			break;
		}
		uint8_t *p = malloc(len);
		if (p == NULL) {
			io = HSM_IO_NOMEM;
			break;
		}
		size_t take = have - off < len ? have - off : len;
		memcpy(p, buf + off, take);
		off += take;
		frames[i] = p;
		lens[i] = len;
		io = recv_all(fd, p + take, len - take, deadline, epoch);
		if (io != HSM_IO_OK)
			break;
	}
	if (io == HSM_IO_OK && off != have)
		io = HSM_IO_MALFORMED; /* bytes past the replies: nothing asked for them */
	if (io != HSM_IO_OK)
		for (i = 0; i < n; i++) {
			hsm_free_wipe(frames[i], frames[i] != NULL ? lens[i] : 0);
			frames[i] = NULL;
		}
	explicit_bzero(buf, top);
	return io;
}

/* hsm_conn_stale says whether an idle connection has something to read
 * (EOF, a reset, or bytes no request asked for): it cannot carry a call. */
int hsm_conn_stale(int fd)
{
	/* Bytes libssl holds that no request asked for. */
	if (hsm_tls_is(fd) && hsm_tls_pending(fd))
		return 1;
	/* Reply bytes no request asked for; the socket then says whether
	 * the daemon is still there. */
	if (hsm_ring_pending(fd))
		return 1;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int k;
	do
		k = poll(&p, 1, 0);
	while (k < 0 && errno == EINTR);
	return k != 0;
}
