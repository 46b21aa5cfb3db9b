/*
 * tls.c: the module's side of remote daemons (docs/remote.md): TCP and
 * TLS 1.3 through the system's OpenSSL (libssl), with a client
 * certificate, the daemons verified against tls_ca, and session
 * resumption so that a reconnect costs one round trip less.
 *
 * Nothing happens before the first dial: C_Initialize only reads the
 * configuration, and the SSL_CTX (which reads the certificate files) is
 * made by the first connection. A dial tries the server that served last
 * first (hsm_tls_current); conn.c moves on to the next when it fails.
 *
 * A TLS connection is its socket's descriptor, with its SSL found in a
 * small table. Writes go through a BIO of our own that sends with
 * MSG_NOSIGNAL: a daemon gone away is EPIPE, never SIGPIPE.
 *
 * C_Finalize (hsm_tls_finalize) may overtake a dial (a
 * C_WaitForSlotEvent's): the BIO method stays while a dial is under way,
 * and a context the dial made from the files of before is not kept.
 *
 * Fork: state.c's prepare handler takes mu, last of the module's locks,
 * so the child inherits the table whole; mu is never held across I/O (the
 * context's files are read, and the handshake made, outside it). The
 * child handler sets aside the SSL_CTX, the sessions kept for resumption
 * and the table's SSL objects, without touching them; the child's next
 * dial makes its own, and its first handshake is a full one. An SSL that
 * a thread was reading or writing at the fork (outside mu: busy) may be
 * half changed in the child's copy, and is never freed there; the others
 * the child's C_Finalize frees, which sends nothing.
 *
 * Errors a user can act on (a certificate the daemon refused, one expired,
 * an unknown CA, a server that is not hsmemu, a key file others may read)
 * are logged once each, with what to fix; the call then finds no daemon,
 * and the slot reports no token.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "hsm.h"

#define MAX_SERVERS 8
#define MAX_TLS_CONNS 128

struct server {
	char host[256];
	char port[16];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* All guarded by mu. */
static char parsed_from[sizeof ((hsm_config *)0)->server];
static struct server servers[MAX_SERVERS];
static int nservers;
static SSL_CTX *ctx;
static SSL_SESSION *sessions[MAX_SERVERS];
static struct {
	int fd;
	SSL *ssl;
	int server;
	int busy; /* threads reading or writing it (ssl_use .. ssl_done) */
} conns[MAX_TLS_CONNS];
static int nconns;
/* Dials under way: the BIO method stays while one is. */
static int dialing;
/* Bumped by hsm_tls_finalize: a context a dial made from an earlier
 * initialisation's files is not kept. */
static unsigned long finalizations;

static int current; /* atomic */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- logging: each kind of error once per process ---- */

enum { LOG_KIND_MAX = 16 };
static int logged[LOG_KIND_MAX];

static void log_once(int kind, const char *fmt, ...)
{
	if (kind < 0 || kind >= LOG_KIND_MAX || __atomic_exchange_n(&logged[kind], 1, __ATOMIC_ACQ_REL))
		return;
	char msg[1024];
	int n = snprintf(msg, sizeof msg, "hsmemu-pkcs11: ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof msg - n, fmt, ap);
	va_end(ap);
	hsm_log_note(msg);
}

enum {
	L_CONFIG,
	L_KEY_MODE,
	L_FILES,
	L_VERIFY,
	L_REFUSED_CERT,
	L_EXPIRED,
	L_UNKNOWN_CA,
	L_NOT_HSMEMU,
	L_HELLO_REFUSED,
	L_PROTOCOL,
};

/* ---- the server list ---- */

/* parse_servers reads "tls://HOST:PORT, tls://[V6]:PORT, ..." under mu. */
static void parse_servers(const char *list)
{
	if (strcmp(list, parsed_from) == 0)
		return;
	snprintf(parsed_from, sizeof parsed_from, "%s", list);
	nservers = 0;
	char buf[sizeof parsed_from];
	snprintf(buf, sizeof buf, "%s", list);
	for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok != NULL;
	     tok = strtok_r(NULL, ", \t", &save)) {
		if (strncmp(tok, "tls://", 6) != 0 || nservers == MAX_SERVERS) {
			log_once(L_CONFIG, "server \"%s\": want tls://HOST:PORT (at most %d servers)", tok, MAX_SERVERS);
			continue;
		}
		char *hp = tok + 6, *host = hp, *colon;
		if (hp[0] == '[') {
			char *end = strchr(hp, ']');
			if (end == NULL || end[1] != ':') {
				log_once(L_CONFIG, "server \"%s\": want tls://[ADDRESS]:PORT", tok);
				continue;
			}
			*end = '\0';
			host = hp + 1;
			colon = end + 1;
		} else {
			colon = strrchr(hp, ':');
			if (colon == NULL) {
				log_once(L_CONFIG, "server \"%s\": no port (want tls://HOST:PORT)", tok);
				continue;
			}
			*colon = '\0';
		}
		struct server *s = &servers[nservers];
		if (host[0] == '\0' || colon[1] == '\0' || strlen(host) >= sizeof s->host ||
		    strlen(colon + 1) >= sizeof s->port) {
			log_once(L_CONFIG, "server \"%s\": want tls://HOST:PORT", tok);
			continue;
		}
		strcpy(s->host, host);
		strcpy(s->port, colon + 1);
		nservers++;
	}
}

int hsm_tls_servers(void)
{
	const hsm_config *cfg = hsm_config_get();
	if (cfg->server[0] == '\0')
		return 0;
	pthread_mutex_lock(&mu);
	parse_servers(cfg->server);
	int n = nservers;
	pthread_mutex_unlock(&mu);
	/* A list with no usable server still means remote daemons: never
	 * the local socket instead. */
	return n > 0 ? n : -1;
}

int hsm_tls_current(void) { return __atomic_load_n(&current, __ATOMIC_ACQUIRE); }
void hsm_tls_set_current(int i) { __atomic_store_n(&current, i, __ATOMIC_RELEASE); }

/* ---- the BIO: send with MSG_NOSIGNAL ---- */

static BIO_METHOD *bio_method;

static int bio_fd(BIO *b) { return (int)(intptr_t)BIO_get_data(b) - 1; }

static int bio_write(BIO *b, const char *p, int n)
{
	BIO_clear_retry_flags(b);
	ssize_t k = send(bio_fd(b), p, (size_t)n, MSG_NOSIGNAL);
	if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		BIO_set_retry_write(b);
	return (int)k;
}

static int bio_read(BIO *b, char *p, int n)
{
	BIO_clear_retry_flags(b);
	ssize_t k = recv(bio_fd(b), p, (size_t)n, 0);
	if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		BIO_set_retry_read(b);
	return (int)k;
}

static int bio_puts(BIO *b, const char *s) { return bio_write(b, s, (int)strlen(s)); }

/* bio_ctrl serves what libssl asks of a socket BIO: its descriptor, and
 * a flush, which has nothing to do. The descriptor is never closed here. */
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num;
	switch (cmd) {
	case BIO_C_SET_FD:
		BIO_set_data(b, (void *)(intptr_t)(*(int *)ptr + 1));
		BIO_set_init(b, 1);
		return 1;
	case BIO_C_GET_FD:
		if (ptr != NULL)
			*(int *)ptr = bio_fd(b);
		return bio_fd(b);
	case BIO_CTRL_FLUSH:
		return 1;
	}
	return 0;
}

/* ---- the SSL_CTX ---- */

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	int i = (int)(intptr_t)SSL_get_app_data(ssl) - 1;
	if (i < 0 || i >= MAX_SERVERS)
		return 0;
	pthread_mutex_lock(&mu);
	/* A session of a context the fork forgot is not kept. */
	if (SSL_get_SSL_CTX(ssl) != ctx) {
		pthread_mutex_unlock(&mu);
		return 0;
	}
	SSL_SESSION *old = sessions[i];
	sessions[i] = sess;
	pthread_mutex_unlock(&mu);
	if (old != NULL)
		SSL_SESSION_free(old);
	return 1; /* ours now */
}

/* What a forked child inherited and never touches again: kept here, so
 * that it stays reachable (leak checkers) and is never freed twice. */
#define MAX_INHERITED 256
static SSL *inherited_ssl[MAX_INHERITED];
static SSL_SESSION *inherited_sess[MAX_INHERITED];
static SSL_CTX *inherited_ctx[MAX_INHERITED];
static int ninherited_ssl, ninherited_sess, ninherited_ctx;
/* Those busy at the fork: never freed (their copy may be half changed). */
static SSL *inherited_busy[MAX_INHERITED];
static int ninherited_busy;

#define INHERIT(list, n, p)                                                                                            \
	do {                                                                                                           \
		if ((p) != NULL && (n) < MAX_INHERITED)                                                                \
			(list)[(n)++] = (p);                                                                           \
	} while (0)

void hsm_tls_atfork_prepare(void) { pthread_mutex_lock(&mu); }

void hsm_tls_atfork_parent(void) { pthread_mutex_unlock(&mu); }

void hsm_tls_atfork_child(void)
{
	/* One thread, and mu held by it (hsm_tls_atfork_prepare): the table
	 * is whole. */
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	mu = fresh;
	INHERIT(inherited_ctx, ninherited_ctx, ctx);
	ctx = NULL;
	for (int i = 0; i < MAX_SERVERS; i++)
		INHERIT(inherited_sess, ninherited_sess, sessions[i]);
	memset(sessions, 0, sizeof sessions);
	for (int i = 0; i < nconns; i++) {
		if (conns[i].busy)
			INHERIT(inherited_busy, ninherited_busy, conns[i].ssl);
		else
			INHERIT(inherited_ssl, ninherited_ssl, conns[i].ssl);
	}
	/* The pool closes the descriptors when the child initialises, as
	 * plain sockets: nothing is ever written to them. */
	memset(conns, 0, sizeof conns);
	nconns = 0;
	dialing = 0; /* the parent's threads' */
}

/* check_key refuses a key file others may read, as ssh does. */
static int check_key(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0) {
		log_once(L_FILES, "tls_key %s: %s", path, strerror(errno));
		return 0;
	}
	if (st.st_mode & 077) {
		log_once(L_KEY_MODE, "tls_key %s may be read by other users (mode %03o): chmod 600 %s", path,
			 (unsigned)(st.st_mode & 0777), path);
		return 0;
	}
	return 1;
}

/* make_bio_method makes the BIO method once, under mu. */
static int make_bio_method(void)
{
	if (bio_method != NULL)
		return 1;
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "hsmemu socket");
	if (m == NULL)
		return 0;
	BIO_meth_set_write(m, bio_write);
	BIO_meth_set_read(m, bio_read);
	BIO_meth_set_puts(m, bio_puts);
	BIO_meth_set_ctrl(m, bio_ctrl);
	bio_method = m;
	return 1;
}

/* make_ctx makes the context from the configured files, outside mu: the
 * files may be slow to read, and a fork waits for mu. */
static SSL_CTX *make_ctx(void)
{
	const hsm_config *cfg = hsm_config_get();
	if (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0' || cfg->tls_ca[0] == '\0') {
		log_once(L_FILES, "server is set but not tls_cert, tls_key and tls_ca (or HSMEMU_TLS_CERT, "
				  "HSMEMU_TLS_KEY, HSMEMU_TLS_CA): no daemon is used");
		return NULL;
	}
	if (!check_key(cfg->tls_key))
		return NULL;
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());
	if (c == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(c, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
	/* libssl decrypts a record in place in its read buffer and keeps the
	 * plaintext there (a reply: key values, plaintext) until the next
	 * record overwrites it: wipe it once it is read, and at SSL_free. A
	 * write is encrypted in place, so no plaintext stays there. */
	SSL_CTX_set_options(c, SSL_OP_CLEANSE_PLAINTEXT);
	SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(c, new_session);
	const char *what = NULL, *file = NULL;
	if (SSL_CTX_load_verify_locations(c, cfg->tls_ca, NULL) != 1)
		what = "tls_ca", file = cfg->tls_ca;
	else if (SSL_CTX_use_certificate_chain_file(c, cfg->tls_cert) != 1)
		what = "tls_cert", file = cfg->tls_cert;
	else if (SSL_CTX_use_PrivateKey_file(c, cfg->tls_key, SSL_FILETYPE_PEM) != 1)
		what = "tls_key", file = cfg->tls_key;
	else if (SSL_CTX_check_private_key(c) != 1)
		what = "tls_key (it is not the key of tls_cert)", file = cfg->tls_key;
	if (what != NULL) {
		char err[256];
		ERR_error_string_n(ERR_get_error(), err, sizeof err);
		ERR_clear_error();
		log_once(L_FILES, "%s %s cannot be used: %s", what, file, err);
		SSL_CTX_free(c);
		return NULL;
	}
	/* Our own certificate's dates: an expired one would be refused by
	 * every daemon. */
	X509 *own = SSL_CTX_get0_certificate(c);
	if (own != NULL && X509_cmp_current_time(X509_get0_notAfter(own)) < 0)
		log_once(L_EXPIRED, "tls_cert %s has expired: the daemons will refuse it; renew it", cfg->tls_cert);
	return c;
}

/* ---- connections ---- */

static int slot_of(int fd)
{
	for (int i = 0; i < nconns; i++)
		if (conns[i].fd == fd)
			return i;
	return -1;
}

/* ssl_use returns fd's SSL, marked busy until ssl_done: a fork
 * meanwhile leaves the child's copy alone. */
static SSL *ssl_use(int fd, int *server)
{
	pthread_mutex_lock(&mu);
	int i = slot_of(fd);
	SSL *s = i >= 0 ? conns[i].ssl : NULL;
	if (i >= 0)
		conns[i].busy++;
	if (server != NULL)
		*server = i >= 0 ? conns[i].server : 0;
	pthread_mutex_unlock(&mu);
	return s;
}

static void ssl_done(int fd)
{
	pthread_mutex_lock(&mu);
	int i = slot_of(fd);
	if (i >= 0)
		conns[i].busy--;
	pthread_mutex_unlock(&mu);
}

int hsm_tls_is(int fd)
{
	if (hsm_config_get()->server[0] == '\0')
		return 0;
	pthread_mutex_lock(&mu);
	int is = slot_of(fd) >= 0;
	pthread_mutex_unlock(&mu);
	return is;
}

/* poll_for waits until fd is ready for events or the deadline passes. */
static int poll_for(int fd, short events, long long deadline)
{
	for (;;) {
		long long left = deadline - now_ms();
		if (left <= 0)
			return 0;
		struct pollfd p = {.fd = fd, .events = events};
		int k = poll(&p, 1, left > 250 ? 250 : (int)left);
		if (k > 0)
			return 1;
		if (k < 0 && errno != EINTR)
			return 0;
	}
}

/* tcp_connect connects a non-blocking socket to s before the deadline. */
static int tcp_connect(const struct server *s, long long deadline)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *res = NULL;
	if (getaddrinfo(s->host, s->port, &hints, &res) != 0 || res == NULL)
		return -1;
	int fd = -1;
	for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			continue;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		int err = 0;
		socklen_t len = sizeof err;
		if (errno == EINPROGRESS && poll_for(fd, POLLOUT, deadline) &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* diagnose logs, once, what a TLS failure with server s means for the
 * user. */
static void diagnose(SSL *ssl, const struct server *s)
{
	unsigned long e = ERR_peek_last_error();
	int reason = ERR_GET_REASON(e);
	char err[256];
	ERR_error_string_n(e, err, sizeof err);
	ERR_clear_error();
	long v = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (v != X509_V_OK) {
		log_once(v == X509_V_ERR_CERT_HAS_EXPIRED ? L_EXPIRED : L_VERIFY,
			 "the daemon at %s:%s has a certificate tls_ca does not verify (%s): check tls_ca and the "
			 "daemon's --tls-cert",
			 s->host, s->port, X509_verify_cert_error_string(v));
		return;
	}
	switch (reason) {
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
		log_once(L_REFUSED_CERT, "the daemon at %s:%s refused tls_cert (%s): have it issued by a CA in the "
					 "daemon's --client-ca",
			 s->host, s->port, err);
		return;
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
		log_once(L_EXPIRED, "the daemon at %s:%s refused tls_cert as expired: renew it", s->host, s->port);
		return;
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
		log_once(L_UNKNOWN_CA, "the daemon at %s:%s does not know the CA of tls_cert: have it issued by a "
				       "CA in the daemon's --client-ca",
			 s->host, s->port);
		return;
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_UNEXPECTED_EOF_WHILE_READING:
		hsm_tls_not_hsmemu((int)(s - servers));
		return;
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
	case SSL_R_UNSUPPORTED_PROTOCOL:
		log_once(L_PROTOCOL, "the server at %s:%s does not speak TLS 1.3: is it an hsmemu daemon?", s->host,
			 s->port);
		return;
	}
	if (e != 0)
		log_once(L_PROTOCOL, "TLS with the daemon at %s:%s failed: %s", s->host, s->port, err);
}

/* dial is hsm_tls_connect's, counted in dialing: a C_WaitForSlotEvent's
 * dial may outlive C_Finalize, whose hsm_tls_finalize then leaves the BIO
 * method alone. */
static enum hsm_io dial(int i, long long deadline, int *out)
{
	pthread_mutex_lock(&mu);
	parse_servers(hsm_config_get()->server);
	if (nservers == 0 || nconns == MAX_TLS_CONNS || !make_bio_method()) {
		pthread_mutex_unlock(&mu);
		return HSM_IO_UNAVAILABLE;
	}
	i %= nservers;
	struct server s = servers[i];
	SSL_CTX *c = ctx, *made = NULL;
	if (c == NULL) {
		/* Made outside mu; a dial that made one meanwhile wins, and
		 * one made before a C_Finalize serves only this dial. */
		unsigned long fin = finalizations;
		pthread_mutex_unlock(&mu);
		made = make_ctx();
		pthread_mutex_lock(&mu);
		if (fin != finalizations) {
			c = made;
		} else {
			if (ctx == NULL) {
				ctx = made;
				made = NULL;
			}
			c = ctx;
		}
	}
	if (c != NULL)
		SSL_CTX_up_ref(c);
	pthread_mutex_unlock(&mu);
	SSL_CTX_free(made);
	if (c == NULL)
		return HSM_IO_UNAVAILABLE;

	int fd = tcp_connect(&s, deadline);
	SSL *ssl = fd >= 0 ? SSL_new(c) : NULL;
	SSL_CTX_free(c);
	BIO *bio = ssl != NULL ? BIO_new(bio_method) : NULL;
	if (bio == NULL) {
		SSL_free(ssl);
		if (fd >= 0)
			close(fd);
		return HSM_IO_UNAVAILABLE;
	}
	BIO_set_fd(bio, fd, BIO_NOCLOSE);
	SSL_set_bio(ssl, bio, bio);
	SSL_set_app_data(ssl, (void *)(intptr_t)(i + 1));
	struct in6_addr a6;
	struct in_addr a4;
	X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
	if (inet_pton(AF_INET, s.host, &a4) == 1 || inet_pton(AF_INET6, s.host, &a6) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(vp, s.host);
	} else {
		X509_VERIFY_PARAM_set1_host(vp, s.host, 0);
		SSL_set_tlsext_host_name(ssl, s.host);
	}
	pthread_mutex_lock(&mu);
	if (sessions[i] != NULL)
		SSL_set_session(ssl, sessions[i]);
	pthread_mutex_unlock(&mu);

	ERR_clear_error();
	for (;;) {
		int k = SSL_connect(ssl);
		if (k == 1)
			break;
		int e = SSL_get_error(ssl, k);
		if ((e == SSL_ERROR_WANT_READ && poll_for(fd, POLLIN, deadline)) ||
		    (e == SSL_ERROR_WANT_WRITE && poll_for(fd, POLLOUT, deadline)))
			continue;
		if (e == SSL_ERROR_SSL)
			diagnose(ssl, &s);
		SSL_free(ssl);
		close(fd);
		return HSM_IO_UNAVAILABLE;
	}
	pthread_mutex_lock(&mu);
	if (nconns == MAX_TLS_CONNS) {
		pthread_mutex_unlock(&mu);
		SSL_free(ssl);
		close(fd);
		return HSM_IO_UNAVAILABLE;
	}
	conns[nconns].fd = fd;
	conns[nconns].ssl = ssl;
	conns[nconns].server = i;
	conns[nconns].busy = 0;
	nconns++;
	pthread_mutex_unlock(&mu);
	*out = fd;
	return HSM_IO_OK;
}

enum hsm_io hsm_tls_connect(int i, long long deadline, int *out)
{
	pthread_mutex_lock(&mu);
	dialing++;
	pthread_mutex_unlock(&mu);
	enum hsm_io io = dial(i, deadline, out);
	pthread_mutex_lock(&mu);
	dialing--;
	pthread_mutex_unlock(&mu);
	return io;
}

static long send_on(SSL *ssl, int server, const uint8_t *p, size_t n)
{
	ERR_clear_error();
	int k = SSL_write(ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);
	if (k > 0)
		return k;
	switch (SSL_get_error(ssl, k)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_SSL:
		diagnose(ssl, &servers[server]);
		break;
	}
	ERR_clear_error();
	errno = EPIPE;
	return -1;
}

long hsm_tls_send(int fd, const uint8_t *p, size_t n)
{
	int server;
	SSL *ssl = ssl_use(fd, &server);
	if (ssl == NULL) {
		errno = EBADF;
		return -1;
	}
	long k = send_on(ssl, server, p, n);
	int e = errno;
	ssl_done(fd);
	errno = e;
	return k;
}

static long recv_on(SSL *ssl, int server, uint8_t *p, size_t n)
{
	ERR_clear_error();
	int k = SSL_read(ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);
	if (k > 0)
		return k;
	switch (SSL_get_error(ssl, k)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		if (errno == 0)
			return 0;
		return -1;
	case SSL_ERROR_SSL:
		/* With TLS 1.3 the daemon judges our certificate after our
		 * handshake is done: its refusal arrives here, as an alert. */
		diagnose(ssl, &servers[server]);
		break;
	}
	ERR_clear_error();
	errno = ECONNRESET;
	return -1;
}

long hsm_tls_recv(int fd, uint8_t *p, size_t n)
{
	int server;
	SSL *ssl = ssl_use(fd, &server);
	if (ssl == NULL) {
		errno = EBADF;
		return -1;
	}
	long k = recv_on(ssl, server, p, n);
	int e = errno;
	ssl_done(fd);
	errno = e;
	return k;
}

int hsm_tls_pending(int fd)
{
	SSL *ssl = ssl_use(fd, NULL);
	int pending = ssl != NULL && SSL_pending(ssl) > 0;
	if (ssl != NULL)
		ssl_done(fd);
	return pending;
}

/* drop removes fd's entry and returns its SSL. */
static SSL *drop(int fd)
{
	pthread_mutex_lock(&mu);
	SSL *ssl = NULL;
	int i = slot_of(fd);
	if (i >= 0) {
		ssl = conns[i].ssl;
		conns[i] = conns[--nconns];
	}
	pthread_mutex_unlock(&mu);
	return ssl;
}

void hsm_tls_close(int fd)
{
	/* No close_notify: the daemon sees the end of the stream, as it does
	 * when a process exits. */
	SSL_free(drop(fd));
	close(fd);
}

void hsm_tls_forget(int fd)
{
	drop(fd); /* the parent's; its memory is left alone */
	close(fd);
}

void hsm_tls_not_hsmemu(int i)
{
	pthread_mutex_lock(&mu);
	struct server s = i >= 0 && i < nservers ? servers[i] : (struct server){"?", "?"};
	pthread_mutex_unlock(&mu);
	log_once(L_NOT_HSMEMU, "the server at %s:%s is not an hsmemu daemon: check server in module.conf", s.host,
		 s.port);
}

void hsm_tls_refused(int i)
{
	pthread_mutex_lock(&mu);
	struct server s = i >= 0 && i < nservers ? servers[i] : (struct server){"?", "?"};
	pthread_mutex_unlock(&mu);
	log_once(L_HELLO_REFUSED, "the daemon at %s:%s refused this client (its identity holds its limit of "
				  "connections, or speaks no common protocol version): see the daemon's log",
		 s.host, s.port);
}

/* hsm_tls_finalize frees what C_Finalize leaves: the context (each open
 * SSL holds its own reference), the sessions kept for resumption, and a
 * forked child's inherited copies, which are only memory: nothing is
 * sent. Not at unload or exit: libcrypto may have cleaned itself up by
 * then (its atexit handler runs before a library's destructors). */
void hsm_tls_finalize(void)
{
	pthread_mutex_lock(&mu);
	SSL_CTX *c = ctx;
	ctx = NULL;
	SSL_SESSION *sess[MAX_SERVERS];
	memcpy(sess, sessions, sizeof sess);
	memset(sessions, 0, sizeof sessions);
	parsed_from[0] = '\0';
	nservers = 0;
	finalizations++;
	/* The BIO method, once no connection and no dial uses it. */
	BIO_METHOD *bm = NULL;
	if (nconns == 0 && dialing == 0) {
		bm = bio_method;
		bio_method = NULL;
	}
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < MAX_SERVERS; i++)
		SSL_SESSION_free(sess[i]);
	SSL_CTX_free(c);
	for (int i = 0; i < ninherited_ssl; i++)
		SSL_free(inherited_ssl[i]);
	for (int i = 0; i < ninherited_sess; i++)
		SSL_SESSION_free(inherited_sess[i]);
	for (int i = 0; i < ninherited_ctx; i++)
		SSL_CTX_free(inherited_ctx[i]);
	ninherited_ssl = ninherited_sess = ninherited_ctx = 0;
	BIO_meth_free(bm);
}
