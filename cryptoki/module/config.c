/*
 * config.c: where the daemon listens (docs/protocol.md, "Connection").
 *
 *   1. HSMEMU_SOCKET;
 *   2. the "socket = PATH" line of the configuration file: HSMEMU_CONFIG,
 *      else $XDG_CONFIG_HOME/hsmemu/module.conf, else
 *      ~/.config/hsmemu/module.conf; where the user has none of these,
 *      the system's, /etc/hsmemu/module.conf (HSMEMU_SYSTEM_CONFIG names
 *      another), which `make install` writes for the system daemon;
 *   3. $XDG_DATA_HOME/hsmemu/hsmemu.sock, else
 *      ~/.local/share/hsmemu/hsmemu.sock.
 *
 * The file may also say "timeout = SECONDS": how long a call waits for its
 * reply before it fails with CKR_DEVICE_ERROR (default 60; 0 waits forever;
 * 5 with remote daemons), and "log = stderr|syslog|none": where the module
 * says, once, why it did not reach the daemon (hsm_log_note; default
 * stderr), and "transport = ring|socket" (HSMEMU_TRANSPORT wins): ring,
 * the default, offers the daemon shared-memory rings for the frames
 * (ring.c); socket keeps them all on the socket.
 *
 * Remote daemons (docs/remote.md): "server = tls://HOST:PORT, ..." with
 * "tls_cert", "tls_key" and "tls_ca" (PEM files), overridden by
 * HSMEMU_SERVER, HSMEMU_TLS_CERT, HSMEMU_TLS_KEY and HSMEMU_TLS_CA. A
 * server list, from HSMEMU_SERVER or the file, is used instead of the
 * socket, unless HSMEMU_SOCKET is set and HSMEMU_SERVER is not.
 * Lines are "key = value"; blank lines and lines starting with '#' are
 * skipped; unknown keys are ignored. Environment variables are read with
 * secure_getenv, so a set-id program ignores them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "hsm.h"

#define DEFAULT_TIMEOUT_MS 60000
#define DEFAULT_REMOTE_TIMEOUT_MS 5000
#define HSM_SYSTEM_CONFIG "/etc/hsmemu/module.conf"
#define MAX_CONFIG 65536

static const char *env(const char *name)
{
	const char *v = secure_getenv(name);
	return v != NULL && v[0] != '\0' ? v : NULL;
}

/* home returns the user's home directory into buf, or NULL. */
static const char *home(char *buf, size_t n)
{
	const char *h = env("HOME");
	if (h != NULL)
		return h;
	struct passwd pw, *res = NULL;
	if (getpwuid_r(getuid(), &pw, buf, n, &res) != 0 || res == NULL || res->pw_dir == NULL)
		return NULL;
	return res->pw_dir;
}

/* join writes a + b into out; 0 when it does not fit. */
static int join(char *out, size_t n, const char *a, const char *b)
{
	int k = snprintf(out, n, "%s%s", a, b);
	return k > 0 && (size_t)k < n;
}

/* xdg_path builds $VAR/rel, or $HOME/fallback/rel; XDG variables that are
 * not absolute paths are ignored, as the XDG base directory rules say. */
static int xdg_path(char *out, size_t n, const char *var, const char *fallback, const char *rel)
{
	const char *base = env(var);
	if (base != NULL && base[0] == '/') {
		char tmp[4096];
		return join(tmp, sizeof tmp, base, "/") && join(out, n, tmp, rel);
	}
	char pwbuf[4096], tmp[4096];
	const char *h = home(pwbuf, sizeof pwbuf);
	if (h == NULL)
		return 0;
	return snprintf(tmp, sizeof tmp, "%s/%s/", h, fallback) < (int)sizeof tmp &&
	       join(out, n, tmp, rel);
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	char *e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/* set_socket stores a path, expanding a leading "~/"; a path that does not
 * fit sun_path leaves the socket empty (no daemon). */
static void set_socket(hsm_config *cfg, const char *path)
{
	cfg->socket[0] = '\0';
	if (path[0] == '~' && path[1] == '/') {
		char pwbuf[4096];
		const char *h = home(pwbuf, sizeof pwbuf);
		if (h == NULL || !join(cfg->socket, sizeof cfg->socket, h, path + 1))
			cfg->socket[0] = '\0';
		return;
	}
	if (!join(cfg->socket, sizeof cfg->socket, path, ""))
		cfg->socket[0] = '\0';
}

/* read_file reads a small file into a NUL-terminated heap buffer. */
static char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return NULL;
	char *buf = malloc(MAX_CONFIG + 1);
	size_t n = 0;
	while (buf != NULL && n < MAX_CONFIG) {
		ssize_t k = read(fd, buf + n, MAX_CONFIG - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	if (buf != NULL)
		buf[n] = '\0';
	return buf;
}

/* Where hsm_log_note writes: module.conf's "log". */
enum { LOG_TO_STDERR, LOG_TO_SYSLOG, LOG_TO_NONE };
static int log_dest = LOG_TO_STDERR;

/* hsm_log_note writes one line, for people, where module.conf's "log" says:
 * stderr (the default), syslog, or nowhere. */
void hsm_log_note(const char *msg)
{
	switch (__atomic_load_n(&log_dest, __ATOMIC_RELAXED)) {
	case LOG_TO_NONE:
		return;
	case LOG_TO_SYSLOG:
		syslog(LOG_USER | LOG_WARNING, "%s", msg);
		return;
	default:
		fprintf(stderr, "%s\n", msg);
	}
}

/* set_str copies a value that fits; one that does not is dropped. */
static void set_str(char *dst, size_t n, const char *v)
{
	if (!join(dst, n, v, ""))
		dst[0] = '\0';
}

/* parse_config reads "key = value" lines; returns whether a socket was set.
 * *timeout_set says whether the file set the timeout. */
static int parse_config(hsm_config *cfg, char *text, int *timeout_set)
{
	int have_socket = 0;
	for (char *line = text, *next; line != NULL; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		char *l = trim(line);
		if (l[0] == '\0' || l[0] == '#')
			continue;
		char *eq = strchr(l, '=');
		if (eq == NULL)
			continue;
		*eq = '\0';
		char *key = trim(l), *val = trim(eq + 1);
		if (strcmp(key, "socket") == 0 && val[0] != '\0') {
			set_socket(cfg, val);
			have_socket = 1;
		} else if (strcmp(key, "log") == 0) {
			if (strcmp(val, "syslog") == 0)
				__atomic_store_n(&log_dest, LOG_TO_SYSLOG, __ATOMIC_RELAXED);
			else if (strcmp(val, "none") == 0)
				__atomic_store_n(&log_dest, LOG_TO_NONE, __ATOMIC_RELAXED);
			else
				__atomic_store_n(&log_dest, LOG_TO_STDERR, __ATOMIC_RELAXED);
		} else if (strcmp(key, "timeout") == 0) {
			char *end;
			errno = 0;
			long s = strtol(val, &end, 10);
			if (errno == 0 && *end == '\0' && s >= 0 && s <= 86400) {
				cfg->timeout_ms = (int)s * 1000;
				*timeout_set = 1;
			}
		} else if (strcmp(key, "transport") == 0) {
			cfg->ring = strcmp(val, "socket") != 0;
		} else if (strcmp(key, "server") == 0) {
			set_str(cfg->server, sizeof cfg->server, val);
		} else if (strcmp(key, "tls_cert") == 0) {
			set_str(cfg->tls_cert, sizeof cfg->tls_cert, val);
		} else if (strcmp(key, "tls_key") == 0) {
			set_str(cfg->tls_key, sizeof cfg->tls_key, val);
		} else if (strcmp(key, "tls_ca") == 0) {
			set_str(cfg->tls_ca, sizeof cfg->tls_ca, val);
		}
	}
	return have_socket;
}

void hsm_config_load(hsm_config *cfg)
{
	char path[4096];
	int have_socket = 0;

	int timeout_set = 0;
	memset(cfg, 0, sizeof *cfg);
	cfg->timeout_ms = DEFAULT_TIMEOUT_MS;
	cfg->ring = 1;

	const char *file = env("HSMEMU_CONFIG");
	if (file == NULL && xdg_path(path, sizeof path, "XDG_CONFIG_HOME", ".config", "hsmemu/module.conf"))
		file = path;
	char *text = file != NULL ? read_file(file) : NULL;
	if (text == NULL) {
		/* No user file: the system's, where the system daemon is. */
		const char *sys = env("HSMEMU_SYSTEM_CONFIG");
		text = read_file(sys != NULL ? sys : HSM_SYSTEM_CONFIG);
	}
	if (text != NULL) {
		have_socket = parse_config(cfg, text, &timeout_set);
		free(text);
	}
	const char *v;
	if ((v = env("HSMEMU_TLS_CERT")) != NULL)
		set_str(cfg->tls_cert, sizeof cfg->tls_cert, v);
	if ((v = env("HSMEMU_TLS_KEY")) != NULL)
		set_str(cfg->tls_key, sizeof cfg->tls_key, v);
	if ((v = env("HSMEMU_TLS_CA")) != NULL)
		set_str(cfg->tls_ca, sizeof cfg->tls_ca, v);

	if ((v = env("HSMEMU_TRANSPORT")) != NULL)
		cfg->ring = strcmp(v, "socket") != 0;

	const char *sock = env("HSMEMU_SOCKET");
	const char *server = env("HSMEMU_SERVER");
	if (server != NULL)
		set_str(cfg->server, sizeof cfg->server, server);
	else if (sock != NULL)
		cfg->server[0] = '\0';
	if (cfg->server[0] != '\0' && !timeout_set)
		cfg->timeout_ms = DEFAULT_REMOTE_TIMEOUT_MS;
	if (sock != NULL) {
		set_socket(cfg, sock);
		return;
	}
	if (have_socket)
		return;
	if (xdg_path(path, sizeof path, "XDG_DATA_HOME", ".local/share", "hsmemu/hsmemu.sock"))
		set_socket(cfg, path);
}
